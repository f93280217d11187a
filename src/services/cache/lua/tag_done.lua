-- KEYS[1]: a tag's index. ARGV: members whose entries were invalidated.
-- Returns how many left the index.
return redis.call('ZREM', KEYS[1], unpack(ARGV))
