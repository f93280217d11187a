-- All or nothing: every check of the batch consumes, or none does.
-- KEYS: one state key per check (all in one slot). ARGV: per check six
-- values: algorithm (g, t, f, s), limit (capacity), period (refill amount
-- for t), 0 (refill interval for t), cost, shadow (1: its rejection holds
-- back no other check).
-- Returns {all_allowed, then per check allowed, remaining, reset_after_us,
-- retry_after_us or -1}: when one check does not fit, nothing is consumed
-- and every check answers as if alone, without consuming.
local results = {}
local all = true
for i = 1, #KEYS do
  results[i] = run(i, 'd')
  if results[i][1] == 0 and ARGV[(i - 1) * 6 + 6] ~= '1' then all = false end
end
if all then
  for i = 1, #KEYS do results[i] = run(i, 'c') end
end
local out = {all and 1 or 0}
for i = 1, #KEYS do
  for j = 1, 4 do out[#out + 1] = results[i][j] end
end
return out
