-- KEYS[1]: the user's index. ARGV: user id, session key prefix, token hash
-- to keep ('' : none). Returns how many sessions were revoked.
local now = now_us()
local revoked = 0
for _, h in ipairs(session_members(KEYS[1], ARGV[2], ARGV[1], now, true)) do
  if h ~= ARGV[3] then
    revoked = revoked + redis.call('DEL', ARGV[2] .. h)
    redis.call('ZREM', KEYS[1], h)
  end
end
return revoked
