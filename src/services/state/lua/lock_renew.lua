-- KEYS[1]: the lock. ARGV: lease id, ttl ms.
-- Returns {1, fencing token} renewed, or {0, 0}: the lease is not the lock's.
local lease = redis.call('HMGET', KEYS[1], 'lease', 'fence')
if lease[1] ~= ARGV[1] then return {0, 0} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, tonumber(lease[2])}
