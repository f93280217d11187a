-- KEYS: documents (one slot). Returns, per key, {} or {value, content type,
-- version, ttl ms (-1: durable)}.
local out = {}
for i, key in ipairs(KEYS) do
  local d = redis.call('HMGET', key, 'v', 'ct', 'ver')
  if d[3] then
    out[i] = {d[1], d[2] or '', d[3], redis.call('PTTL', key)}
  else
    out[i] = {}
  end
end
return out
