-- KEYS[1]: a one-time token. ARGV[1]: the purpose it must be for.
-- Returns the subject and deletes the token, or nil. A wrong purpose does
-- not burn the token.
local t = redis.call('HMGET', KEYS[1], 'p', 's')
if not t[1] or t[1] ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return t[2]
