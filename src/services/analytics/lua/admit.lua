-- Enters metrics in the tenant's index, all or none.
-- KEYS[1]: the index (a sorted set: metric → last admitted ms).
-- ARGV: keep ms, most metrics, then the metric names.
-- Returns {} when admitted, or the names that found the index full.
local now = idiv(now_us(), 1000)
local keep, max = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
local card = redis.call('ZCARD', KEYS[1])
local new = {}
for i = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then new[#new + 1] = ARGV[i] end
end
if card + #new > max then return new end
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], keep)
return {}
