-- KEYS[1]: the lock (a hash {lease, fence} that expires), KEYS[2]: its
-- fencing counter (durable). ARGV: lease id, ttl ms.
-- Returns {1, fencing token} acquired, or {0, ms until the lease ends}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'lease', ARGV[1], 'fence', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, fence}
