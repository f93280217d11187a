-- KEYS[1]: the queue's prefix. ARGV: most messages, lease ms (0: each
-- message's own), a random number in [0, 1) for backoff jitter, then one
-- token seed per message that may be delivered.
-- Returns {next due ms (-1: none), {id, payload, headers, attempt, max
-- attempts, token, lease expiry, enqueued at, priority, group}...}.
local now = now_ms()
reap(now, tonumber(ARGV[3]))
promote(now)
local out = {-1}
if redis.call('EXISTS', k('paused')) == 1 then return out end
local want = tonumber(ARGV[1])
local seed = 4
while #out - 1 < want do
  -- {id, score, id, score, ...}: taken off the ready set in one command.
  local popped = redis.call('ZPOPMIN', k('ready'), want - (#out - 1))
  if #popped == 0 then break end
  for j = 1, #popped, 2 do
    local id = popped[j]
    local m = k('m:' .. id)
    local f = redis.call('HMGET', m, 'p', 'h', 'a', 'ma', 'ld', 'ex', 'at', 'pr', 'g')
    local ex = tonumber(f[6])
    if ex > 0 and ex <= now then
      -- Expired before it was delivered: dropped, and counted.
      release_group(id, now, f[9])
      redis.call('DEL', m)
      count('n', -1)
      count('expired', 1)
    else
      local attempt = tonumber(f[3]) + 1
      local lease = tonumber(ARGV[2])
      if lease == 0 then lease = tonumber(f[5]) end
      local token = attempt .. '-' .. ARGV[seed]
      seed = seed + 1
      local le = now + lease
      redis.call('HSET', m, 'a', attempt, 'st', 'l', 'tk', token, 'le', le)
      redis.call('ZADD', k('leased'), le, id)
      out[#out + 1] = {id, f[1], f[2], attempt, tonumber(f[4]), token, le, tonumber(f[7]),
        tonumber(f[8]), f[9]}
    end
  end
end
if #out == 1 then
  local first = redis.call('ZRANGE', k('delayed'), 0, 0, 'WITHSCORES')
  if #first > 0 then out[1] = tonumber(first[2]) end
end
return out
