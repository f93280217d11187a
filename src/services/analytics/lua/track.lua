-- One metric's share of a Track: every bucket write of every resolution,
-- and the fold into `__other__` once the metric holds its most
-- combinations.
-- KEYS[1]: the combinations (a sorted set: combination → last tracked ms),
-- KEYS[2]: the metric's bookkeeping (a hash: folded, last).
-- ARGV: key prefix (bucket keys are `<prefix>:s|u:<res>:<start>` and
-- `<prefix>:t:<res>:<start>:<label>`, all in the metric's slot), most
-- combinations, keep ms, top size, number of resolutions, then per
-- resolution: name, bucket ms, retention ms; then number of slices, per
-- slice: at ms (0: now), number of series, per series: combination,
-- events, count, sum, min ('' none), max; number of unique ids, the ids;
-- number of top entries, per entry: label, value, weight.
-- Returns how many events went to `__other__`.
local now = idiv(now_us(), 1000)
local prefix, max_combos, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local top_size = tonumber(ARGV[4])
local res = {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  res[#res + 1] = {name = ARGV[i], bucket = tonumber(ARGV[i + 1]), retention = tonumber(ARGV[i + 2])}
  i = i + 3
end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
local combos = redis.call('ZCARD', KEYS[1])
local folded = 0
local OTHER = '__other__'

local function bucket(r, at, kind)
  local start = at - math.fmod(at, r.bucket)
  local key = prefix .. ':' .. kind .. ':' .. r.name .. ':' .. int(start)
  return key, start + r.bucket + r.retention
end

local nslices = tonumber(ARGV[i])
i = i + 1
for _ = 1, nslices do
  local at = tonumber(ARGV[i])
  if at == 0 then at = now end
  local nseries = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, nseries do
    local combo, events = ARGV[i], tonumber(ARGV[i + 1])
    local count, sum, min, max = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    i = i + 6
    if redis.call('ZSCORE', KEYS[1], combo) then
      redis.call('ZADD', KEYS[1], now, combo)
    elseif combos < max_combos then
      redis.call('ZADD', KEYS[1], now, combo)
      combos = combos + 1
    else
      combo = OTHER
      folded = folded + events
    end
    for _, r in ipairs(res) do
      local key, expires = bucket(r, at, 's')
      redis.call('HINCRBY', key, combo .. '\30c', count)
      redis.call('HINCRBYFLOAT', key, combo .. '\30s', sum)
      if min ~= '' then
        local old = tonumber(redis.call('HGET', key, combo .. '\30n'))
        if not old or tonumber(min) < old then redis.call('HSET', key, combo .. '\30n', min) end
        old = tonumber(redis.call('HGET', key, combo .. '\30x'))
        if not old or tonumber(max) > old then redis.call('HSET', key, combo .. '\30x', max) end
      end
      redis.call('PEXPIREAT', key, expires)
    end
  end
  local nids = tonumber(ARGV[i])
  if nids > 0 then
    for _, r in ipairs(res) do
      local key, expires = bucket(r, at, 'u')
      for j = 1, nids, 1000 do
        redis.call('PFADD', key, unpack(ARGV, i + j, math.min(i + j + 999, i + nids)))
      end
      redis.call('PEXPIREAT', key, expires)
    end
  end
  i = i + nids + 1
  local ntops = tonumber(ARGV[i])
  i = i + 1
  for _, r in ipairs(res) do
    local base, expires = bucket(r, at, 't')
    for j = 0, ntops - 1 do
      local key = base .. ':' .. ARGV[i + 3 * j]
      redis.call('ZINCRBY', key, ARGV[i + 3 * j + 2], ARGV[i + 3 * j + 1])
      if redis.call('ZCARD', key) > 2 * top_size then
        redis.call('ZREMRANGEBYRANK', key, 0, -(top_size + 1))
      end
      redis.call('PEXPIREAT', key, expires)
    end
  end
  i = i + 3 * ntops
end

if folded > 0 then redis.call('HINCRBY', KEYS[2], 'folded', folded) end
redis.call('HSET', KEYS[2], 'last', now)
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[1], keep)
return folded
