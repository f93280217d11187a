-- KEYS[1]: a tag's index, KEYS[2]: the tag's last invalidation time.
-- ARGV[1]: how long to remember the invalidation (ms).
-- Empties the index and returns its live members.
local now = now_us()
local members = redis.call('ZRANGEBYSCORE', KEYS[1], idiv(now, 1000), '+inf')
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], int(now), 'PX', ARGV[1])
return members
