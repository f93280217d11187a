-- KEYS[1]: the queue's prefix. ARGV: id, lease token, done retention ms.
-- Returns 1 acked, 2 acked before under this lease, 0 lease lost (the
-- message was delivered again, died, or is gone).
local now = now_ms()
local id = ARGV[1]
local m = k('m:' .. id)
local f = redis.call('HMGET', m, 'st', 'tk')
if not f[1] or f[2] ~= ARGV[2] then return 0 end
if f[1] == 'c' then return 2 end
if f[1] ~= 'l' then return 0 end
redis.call('ZREM', k('leased'), id)
release_group(id, now)
redis.call('HDEL', m, 'p', 'h')
redis.call('HSET', m, 'st', 'c')
redis.call('PEXPIRE', m, ARGV[3])
count('n', -1)
count('acked', 1)
rate('a', now)
return 1
