-- KEYS[1]: the topic's stream. ARGV: group, consumer, where a new group
-- starts (an id, read after), how many, claim idle ms, longest age ms.
-- Makes the group (and an empty topic) if needed, then hands this member
-- pending messages idle past the claim time, then new ones while it holds
-- fewer than `how many` unacknowledged.
-- Returns {{id, fields, deliveries}...}.
local key, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local count = tonumber(ARGV[4])
local made = redis.pcall('XGROUP', 'CREATE', key, group, ARGV[3], 'MKSTREAM')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
  return redis.error_reply(made.err)
end
if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ARGV[6]) end
redis.call('XGROUP', 'CREATECONSUMER', key, group, consumer)
local out = {}
local claimed = redis.call('XAUTOCLAIM', key, group, consumer, ARGV[5], '0-0', 'COUNT', count)
for _, e in ipairs(claimed[2]) do
  if e[2] then
    local p = redis.call('XPENDING', key, group, e[1], e[1], 1)
    local n = 1
    if p[1] then n = p[1][4] end
    out[#out + 1] = {e[1], e[2], n}
  end
end
-- `count` bounds what this member holds unacknowledged, not one read.
local held = #redis.call('XPENDING', key, group, '-', '+', count, consumer)
local left = count - math.max(held, #out)
if left > 0 then
  local new = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', left, 'STREAMS', key, '>')
  if new and new[1] then
    for _, e in ipairs(new[1][2]) do out[#out + 1] = {e[1], e[2], 1} end
  end
end
return out
