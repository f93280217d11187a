-- Independent checks that arrived together, in one call: each decided
-- and consumed alone, in order, exactly as its own call of its
-- algorithm's script would (a key checked twice sees the first check's
-- consumption). KEYS / ARGV: as dispatch.lua.
-- Returns per check allowed, remaining, reset_after_us, retry_after_us or
-- -1, flattened.
local out = {}
for i = 1, #KEYS do
  local d = run(i, 'c')
  for j = 1, 4 do out[#out + 1] = d[j] end
end
return out
