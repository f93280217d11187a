-- KEYS[1]: a tag's index, a sorted set of caller keys scored by when their
-- entry expires (ms); KEYS[2]: the tag's last invalidation time (us).
-- ARGV: caller key, entry lifetime (ms).
-- Expired members are pruned on every add and the index expires with its
-- last member, so it never outgrows the live entries.
-- Returns the tag's last invalidation time (0: none remembered), read after
-- the key is indexed, so an invalidation either sees the key or is seen.
local now_ms = idiv(now_us(), 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return tonumber(redis.call('GET', KEYS[2]) or '0')
