-- KEYS: counters (one slot). Returns each value, 0 when absent.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = tonumber(redis.call('GET', key) or '0')
end
return out
