-- KEYS[1]: a one-time token. ARGV: purpose, subject, TTL (us).
-- Returns when it expires (us).
local now = now_us()
redis.call('HSET', KEYS[1], 'p', ARGV[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl_ms(tonumber(ARGV[3])))
return int(now + tonumber(ARGV[3]))
