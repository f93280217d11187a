-- Checks by position, for the scripts that take several (batch.lua,
-- many.lua). KEYS: one state key per check. ARGV: per check six values:
-- algorithm (g, t, f, s), limit (capacity), period (refill amount for t),
-- 0 (refill interval for t), cost, shadow (1: a shadow-mode policy).
-- run(i, mode) applies check i in `mode` (see gcra.lua), with its own cost
-- unless `cost` is given, and returns its
-- {allowed, remaining, reset_after_us, retry_after_us or -1}.
local function run(i, mode, cost)
  local at = (i - 1) * 6
  local alg = ARGV[at + 1]
  local a, b, c = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  cost = cost or tonumber(ARGV[at + 5])
  if alg == 'g' then return gcra(KEYS[i], a, b, cost, mode) end
  if alg == 't' then return token_bucket(KEYS[i], a, b, c, cost, mode) end
  if alg == 'f' then return fixed_window(KEYS[i], a, b, cost, mode) end
  return sliding_window(KEYS[i], a, b, cost, mode)
end

