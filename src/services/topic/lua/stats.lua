-- KEYS[1]: the topic's stream.
-- Returns {0} when there is no topic, else {1, length, first id, last id
-- ('' when empty), {name, pending, consumers, last delivered id}...}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local first, last = '', ''
for i = 1, #info, 2 do
  if info[i] == 'first-entry' and info[i + 1] then first = info[i + 1][1] end
  if info[i] == 'last-entry' and info[i + 1] then last = info[i + 1][1] end
end
local reply = {1, redis.call('XLEN', KEYS[1]), first, last}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  reply[#reply + 1] = {f['name'], f['pending'], f['consumers'], f['last-delivered-id']}
end
return reply
