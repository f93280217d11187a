-- KEYS[1]: the new session, KEYS[2]: the user's index.
-- ARGV: session id, user id, data JSON, idle TTL (us), absolute TTL (us),
-- max sessions, on limit (1 evict oldest, 2 reject), client IP, user agent,
-- session key prefix, token hash, index TTL (ms).
-- Returns {0} at the cap with REJECT, else {1, created_at_us, evicted ids...}.
local now = now_us()
local prefix, uid = ARGV[10], ARGV[2]
local mine = session_members(KEYS[2], prefix, uid, now, true)
local evicted = {}
while #mine >= tonumber(ARGV[6]) do
  if ARGV[7] == '2' then return {0} end
  local oldest = table.remove(mine, 1)
  evicted[#evicted + 1] = redis.call('HGET', prefix .. oldest, 'sid')
  redis.call('DEL', prefix .. oldest)
  redis.call('ZREM', KEYS[2], oldest)
end
local s = {ARGV[1], uid, ARGV[3], '1', int(now), int(now), ARGV[4],
  int(now + tonumber(ARGV[5])), ARGV[8], ARGV[9]}
local fields = {}
for i, f in ipairs(SESSION_FIELDS) do
  fields[#fields + 1] = f
  fields[#fields + 1] = s[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
session_expire(KEYS[1], s)
redis.call('ZADD', KEYS[2], now, ARGV[11])
-- The index lives as long as its longest-lived session may.
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[12]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[12])
end
return {1, int(now), unpack(evicted)}
