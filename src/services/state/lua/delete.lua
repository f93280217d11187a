-- KEYS as put.lua. ARGV: key, expected version (-1: any), max log entries.
-- Returns {1, write number} deleted, {0, current version} not deleted.
local now = now_ms()
prune(KEYS[2], KEYS[3], now)
local current = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
local expected = tonumber(ARGV[2])
if current == 0 or (expected >= 0 and current ~= expected) then return {0, current} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
log_change(KEYS[5], ARGV[3], ARGV[1], 'delete', seq)
return {1, seq}
