-- KEYS[1]: the queue's prefix. ARGV: id.
-- Returns 1 cancelled, 0 not (no such message, leased, or done).
local now = now_ms()
local id = ARGV[1]
local m = k('m:' .. id)
local st = redis.call('HGET', m, 'st')
if not st or st == 'l' or st == 'c' then return 0 end
if st == 'w' then redis.call('ZREM', k('ready'), id)
elseif st == 'd' then redis.call('ZREM', k('delayed'), id)
elseif st == 'x' then redis.call('ZREM', k('dead'), id)
elseif st == 'q' then redis.call('LREM', k('g:' .. redis.call('HGET', m, 'g')), 0, id) end
if st ~= 'q' then release_group(id, now) end
redis.call('DEL', m)
count('n', -1)
return 1
