-- KEYS[1]: the counter. ARGV: delta, ttl ms (0: durable), min ('' none),
-- max ('' none). Counters stay within +/-2^53, exact in Lua's doubles.
-- Returns {1, value} applied, {0, value} refused by the bounds.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local value = current + tonumber(ARGV[1])
if (ARGV[3] ~= '' and value < tonumber(ARGV[3])) or (ARGV[4] ~= '' and value > tonumber(ARGV[4]))
  or value > 9007199254740992 or value < -9007199254740992 then
  return {0, current}
end
redis.call('SET', KEYS[1], string.format('%.0f', value))
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, value}
