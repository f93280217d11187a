-- KEYS[1]: a tag's index, KEYS[2]: the tag's last invalidation time.
-- ARGV[1]: how long to remember the invalidation (ms).
-- Marks the tag invalidated now and returns the index's live members. The
-- index keeps them until each is invalidated (cache_tag_done.lua), so an
-- interrupted invalidation is completed by a retry.
local now = now_us()
redis.call('SET', KEYS[2], int(now), 'PX', ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], idiv(now, 1000), '+inf')
