-- KEYS[1]: the queue's prefix. ARGV: limit, then ids (none: the oldest
-- `limit` dead). Dead messages go back with no attempts used.
-- Returns how many were redriven.
local now = now_ms()
local ids = {}
if #ARGV == 1 then
  ids = redis.call('ZRANGE', k('dead'), 0, tonumber(ARGV[1]) - 1)
else
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', k('dead'), id) == 1 then
    local m = k('m:' .. id)
    redis.call('HSET', m, 'a', 0, 'rs', '', 'du', now, 'tk', '')
    local g = redis.call('HGET', m, 'g')
    if g ~= '' and redis.call('HSETNX', k('gl'), g, id) == 0 then
      redis.call('RPUSH', k('g:' .. g), id)
      redis.call('HSET', m, 'st', 'q')
    else
      place(id, now)
    end
    n = n + 1
  end
end
return n
