-- KEYS[1]: entry, KEYS[2]: its lease. ARGV: lease ttl (us), new token,
-- longest wait hint (us).
-- Returns {1 hit | 2 leased | 3 stale, entry fields...} (see cache_read) or
-- {4 wait, retry_after_us}.
local now = now_us()
local e = cache_read(KEYS[1], now)
if e and e[5] == 0 then
  return {1, e[1], e[2], e[3], e[4], e[5], e[6], e[7]}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if e then
    return {3, e[1], e[2], e[3], e[4], e[5], e[6], e[7]}
  end
  local left = redis.call('PTTL', KEYS[2]) * 1000
  if left < 0 then left = 0 end
  return {4, math.min(left, tonumber(ARGV[3]))}
end
redis.call('HSET', KEYS[2], 't', ARGV[2], 'at', int(now))
redis.call('PEXPIRE', KEYS[2], ttl_ms(tonumber(ARGV[1])))
if e then
  return {2, e[1], e[2], e[3], e[4], e[5], e[6], e[7]}
end
return {2}
