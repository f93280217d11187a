-- KEYS[1]: the queue's prefix. ARGV: id, lease token, lease ms.
-- Returns the new lease expiry (ms), or 0: lease lost.
local now = now_ms()
local m = k('m:' .. ARGV[1])
local f = redis.call('HMGET', m, 'st', 'tk')
if f[1] ~= 'l' or f[2] ~= ARGV[2] then return 0 end
local le = now + tonumber(ARGV[3])
redis.call('HSET', m, 'le', le)
redis.call('ZADD', k('leased'), le, ARGV[1])
return le
