-- KEYS[1]: the lock. ARGV: lease id. Returns 1 released, 0 not the lease's.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
