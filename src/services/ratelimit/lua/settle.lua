-- Settles a reservation (see reservation.rs). KEYS[1]: the state,
-- KEYS[2]: the reservation's marker, KEYS[3]: the state's reset
-- generation. ARGV: one check as dispatch.lua takes
-- it, its cost the units to give back; then ARGV[7], the units to consume
-- beyond the reservation whether or not they fit.
-- Returns {result (1 settled, 2 settled before, 3 the marker is gone or a
-- Reset since voided it),
-- allowed, remaining, reset_after_us, retry_after_us or -1}.

-- Gives back up to `units` of the charge that left marker `m` {t, n, w}:
-- never more than it still holds back. The twin of `give_back` in
-- reservation.rs. The state keeps its TTL (it only gets closer to full).
local function give_back(alg, key, a, b, c, m, units)
  local now = now_us()
  if alg == 'g' then
    local s = redis.call('HMGET', key, 't', 'f')
    local tat = tonumber(s[1])
    if not tat or tat <= now then return end
    local q, r = idiv(b, a)
    local give = units * q + idiv(units * r, a)
    local held = tonumber(m[1]) - now
    if held < give then give = held end
    if give <= 0 then return end
    local new = tat - give
    if new <= now then
      redis.call('HSET', key, 't', int(now), 'f', 0)
    else
      redis.call('HSET', key, 't', int(new))
    end
  elseif alg == 't' then
    local s = redis.call('HMGET', key, 'n')
    local tokens = tonumber(s[1])
    if not tokens then return end
    local refill_from, after = tonumber(m[1]), tonumber(m[2])
    local refilled = 0
    if now > refill_from then refilled = idiv(now - refill_from, c) * b end
    local give = a - after - refilled
    if units < give then give = units end
    if give <= 0 then return end
    redis.call('HSET', key, 'n', int(math.min(a, tokens + give)))
  else
    local s = redis.call('HMGET', key, 'w', 'c', 'p')
    local window, charged = tonumber(s[1]), tonumber(m[3])
    if not window then return end
    local count, prev = tonumber(s[2]) or 0, tonumber(s[3]) or 0
    if window == charged and count > 0 then
      redis.call('HSET', key, 'c', int(count - math.min(units, count)))
    elseif alg == 's' and window == charged + 1 and prev > 0 then
      redis.call('HSET', key, 'p', int(prev - math.min(units, prev)))
    end
  end
end

local m = redis.call('HMGET', KEYS[2], 't', 'n', 'w', 's', 'g')
local result = 1
if m[4] then
  result = 2
elseif not m[1] or (m[5] or '') ~= (redis.call('GET', KEYS[3]) or '') then
  result = 3
end
if result == 1 then
  redis.call('HSET', KEYS[2], 's', 1)
  local units = tonumber(ARGV[5])
  if units > 0 then
    give_back(ARGV[1], KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), m, units)
  end
end
local d
local extra = tonumber(ARGV[7])
if result ~= 2 and extra > 0 then
  d = run(1, 'f', extra)
else
  d = run(1, 'd', 0)
end
return {result, d[1], d[2], d[3], d[4]}
