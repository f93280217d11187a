-- KEYS[1]: a session, KEYS[2]: the user's index. ARGV[1]: its token hash.
-- Returns 1 if a live session was revoked.
local live = session_read(KEYS[1], now_us())
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if live then return 1 end
return 0
