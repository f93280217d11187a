-- KEYS[1]: entry, KEYS[2]: its lease. ARGV: value, content_type, ttl_us,
-- stale_us, condition (0 any, 1 if absent, 2 if present), expected version
-- (-1: none), lease token ('' : none), tags joined by newlines, the last
-- invalidation time (us) of those tags.
-- Returns {outcome (1 stored, 2 condition failed, 3 version mismatch,
-- 4 lease invalid), version}.
local now = now_us()
-- Only the version and expiry: reading the value too (cache_read) would
-- copy it into Lua on every write.
local held = redis.call('HMGET', KEYS[1], 'ver', 'ea')
local current_entry = held[1] and tonumber(held[2]) and tonumber(held[2]) > now
local current = 0
if current_entry then current = tonumber(held[1]) end

local condition = tonumber(ARGV[5])
if (condition == 1 and current_entry) or (condition == 2 and not current_entry) then
  return {2, current}
end
local expected = tonumber(ARGV[6])
if expected >= 0 and current ~= expected then
  return {3, current}
end
if ARGV[7] ~= '' then
  local lease = redis.call('HMGET', KEYS[2], 't', 'at')
  local issued = tonumber(lease[2])
  if lease[1] ~= ARGV[7] or not issued or issued <= tonumber(ARGV[9]) then
    return {4, current}
  end
end

-- Any write voids an outstanding lease: its value would be older.
redis.call('DEL', KEYS[2])
local version = math.max(current + 1, now)
local ttl = tonumber(ARGV[3])
local expires_at = now + ttl + tonumber(ARGV[4])
-- HSET replaces every field an entry has, so the old one needs no DEL.
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ct', ARGV[2], 'ver', int(version),
  'fu', int(now + ttl), 'ea', int(expires_at), 'tg', ARGV[8])
redis.call('PEXPIREAT', KEYS[1], ceil_div(expires_at, 1000))
return {1, version}
