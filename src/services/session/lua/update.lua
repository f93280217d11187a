-- KEYS[1]: a session. ARGV: mode (1 merge, 2 replace), data JSON, keys to
-- remove (JSON array), expected version (-1: any), max data bytes.
-- Returns {0} no session, {1, fields...} updated, {2, fields...} version
-- mismatch, {3} too large.
local s = session_read(KEYS[1], now_us())
if not s then return {0} end
local expected = tonumber(ARGV[4])
if expected >= 0 and tonumber(s[4]) ~= expected then return {2, unpack(s)} end
local data
if ARGV[1] == '2' then
  data = cjson.decode(ARGV[2])
else
  data = cjson.decode(s[3])
  for _, k in ipairs(cjson.decode(ARGV[3])) do data[k] = nil end
  for k, v in pairs(cjson.decode(ARGV[2])) do data[k] = v end
end
local size = 0
for k, v in pairs(data) do size = size + #k + #v end
if size > tonumber(ARGV[5]) then return {3} end
if next(data) == nil then s[3] = '{}' else s[3] = cjson.encode(data) end
s[4] = int(tonumber(s[4]) + 1)
redis.call('HSET', KEYS[1], 'data', s[3], 'ver', s[4])
return {1, unpack(s)}
