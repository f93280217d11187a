-- KEYS[1]: the document, KEYS[2]: index, KEYS[3]: exp, KEYS[4]: seq,
-- KEYS[5]: log. ARGV: key, value, content type, expected version (-1: any;
-- 0: absent), ttl ms (0: durable), max log entries, most documents (0: no
-- bound), change type ('put' or 'patch').
-- Returns {1, version} written, {0, current version} refused by the
-- version, {-1, count} refused: the collection is full.
local now = now_ms()
prune(KEYS[2], KEYS[3], now)
local current = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
local expected = tonumber(ARGV[4])
if expected >= 0 and current ~= expected then return {0, current} end
local most = tonumber(ARGV[7])
if current == 0 and most > 0 then
  local count = redis.call('ZCARD', KEYS[2]) - redis.call('ZCOUNT', KEYS[3], '-inf', now)
  if count >= most then return {-1, count} end
end
local version = redis.call('INCR', KEYS[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'ct', ARGV[3], 'ver', version)
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('PEXPIREAT', KEYS[1], now + ttl)
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
log_change(KEYS[5], ARGV[6], ARGV[1], ARGV[8], version)
return {1, version}
