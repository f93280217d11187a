-- KEYS[1]: a session. ARGV[1]: '1' to touch (slide the idle expiry); '0'
-- writes nothing (the read-only form, which a full Redis still runs).
-- Returns the SESSION_FIELDS values, or {} if there is no live session.
local now = now_us()
local s = session_read(KEYS[1], now)
if not s then return {} end
if ARGV[1] == '1' then
  s[6] = int(now)
  redis.call('HSET', KEYS[1], 'ls', s[6])
  session_expire(KEYS[1], s)
end
return s
