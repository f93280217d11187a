-- KEYS[1]: the session under its old token, KEYS[2]: under the new one,
-- KEYS[3]: the user's index. ARGV: old token hash, new token hash.
-- The old key is gone when this returns. Returns the fields, or {}.
local s = session_read(KEYS[1], now_us())
if not s then return {} end
redis.call('RENAME', KEYS[1], KEYS[2])
local score = redis.call('ZSCORE', KEYS[3], ARGV[1]) or s[5]
-- Add before removing: emptying the set would delete it, and a re-created
-- index would have no TTL.
redis.call('ZADD', KEYS[3], score, ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return s
