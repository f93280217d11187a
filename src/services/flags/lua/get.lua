-- KEYS[1]: definitions, KEYS[2]: versions. ARGV[1]: key.
-- Returns {definition, version} or {}.
local d = redis.call('HGET', KEYS[1], ARGV[1])
if not d then return {} end
return {d, redis.call('HGET', KEYS[2], ARGV[1]) or '0'}
