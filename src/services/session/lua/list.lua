-- KEYS[1]: the user's index. ARGV: user id, session key prefix, 'count' or
-- 'list', '1' to prune members whose session has gone ('0' writes nothing:
-- the form a full Redis still runs). Returns the count, or each live
-- session's fields, oldest first.
local now = now_us()
local mine = session_members(KEYS[1], ARGV[2], ARGV[1], now, ARGV[4] == '1')
if ARGV[3] == 'count' then return #mine end
local out = {}
for _, h in ipairs(mine) do
  local s = session_read(ARGV[2] .. h, now)
  if s then out[#out + 1] = s end
end
return out
