-- KEYS[1]: the queue's prefix. ARGV: after (a dead sequence; 0 from the
-- start), limit. Returns {id, payload, headers, attempts, max attempts,
-- enqueued at, priority, group, died at, reason, dead sequence}... oldest first.
local ids = redis.call('ZRANGEBYSCORE', k('dead'), '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', k('m:' .. id), 'p', 'h', 'a', 'ma', 'at', 'pr', 'g', 'dt', 'rs', 'dq')
  out[#out + 1] = {id, f[1], f[2], tonumber(f[3]), tonumber(f[4]), tonumber(f[5]), tonumber(f[6]),
    f[7], tonumber(f[8]), f[9], tonumber(f[10])}
end
return out
