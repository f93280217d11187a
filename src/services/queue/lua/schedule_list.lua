-- KEYS[1]: the queue's prefix. Returns {id, definition, next ms}...
local out = {}
local all = redis.call('HGETALL', k('sched'))
for i = 1, #all, 2 do
  out[#out + 1] = {all[i], all[i + 1], tonumber(redis.call('ZSCORE', k('next'), all[i]) or '0')}
end
return out
