-- KEYS[1]: the topic's stream, KEYS[2]: the newest id retention removed.
-- ARGV: the id to read after, how many.
-- Returns {newest id retention removed ('0-0': none), first id kept ('' when
-- empty), entries}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', '', {}} end
local deleted = redis.call('GET', KEYS[2]) or '0-0'
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = ''
if head[1] then first = head[1][1] end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {deleted, first, entries}
