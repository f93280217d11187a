-- KEYS[1]: the queue's prefix. ARGV: limit, then ids (none: the oldest
-- `limit` dead). Returns how many dead messages were deleted.
local ids = {}
if #ARGV == 1 then
  ids = redis.call('ZRANGE', k('dead'), 0, tonumber(ARGV[1]) - 1)
else
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', k('dead'), id) == 1 then
    redis.call('DEL', k('m:' .. id))
    count('n', -1)
    n = n + 1
  end
end
return n
