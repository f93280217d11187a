-- KEYS[1]: the topic's stream, KEYS[2]: the id of the newest message
-- retention removed. ARGV: most entries kept, longest age ms, then per
-- message: payload, header count, then name, value per header.
-- Appends every message in order, trims by length and age (noting the
-- newest id removed, so a replay from before it is told of the gap), and
-- renews both keys' TTL (the age bound). Returns the ids, in order.
local key = KEYS[1]
local max_len, max_age = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = {}
local i = 3
while i <= #ARGV do
  local fields = {'p', ARGV[i]}
  local n = tonumber(ARGV[i + 1])
  for j = 1, n do
    fields[#fields + 1] = 'h:' .. ARGV[i + 2 * j]
    fields[#fields + 1] = ARGV[i + 2 * j + 1]
  end
  i = i + 2 + 2 * n
  ids[#ids + 1] = redis.call('XADD', key, '*', unpack(fields))
end
local removed = nil
local over = redis.call('XLEN', key) - max_len
if over > 0 then
  local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', over)
  removed = gone[#gone][1]
  redis.call('XTRIM', key, 'MAXLEN', max_len)
end
-- Age: look only when the oldest entry is too old (an XREVRANGE below
-- every entry walks the whole stream on Redis 7.0).
local oldest = idiv(now_us(), 1000) - max_age
local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
if head[1] and tonumber(string.match(head[1][1], '^(%d+)')) < oldest then
  local older = redis.call('XREVRANGE', key, '(' .. int(oldest) .. '-0', '-', 'COUNT', 1)
  if older[1] then
    removed = older[1][1]
    redis.call('XTRIM', key, 'MINID', oldest)
  end
end
if removed then redis.call('SET', KEYS[2], removed) end
redis.call('PEXPIRE', key, max_age)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], max_age) end
return ids
