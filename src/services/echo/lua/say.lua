-- KEYS[1]: the count of a text. ARGV[1]: how long it is remembered (us).
-- Returns the count after this saying.
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ttl_ms(tonumber(ARGV[1])))
return count
