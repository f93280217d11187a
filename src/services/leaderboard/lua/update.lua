-- KEYS[1]: the definition, KEYS[2]: the revision counter.
-- ARGV[1]: the new JSON, ARGV[2]: the generation the caller read.
-- Returns {1, revision} updated, {0} no such board (or another generation).
if redis.call('HGET', KEYS[1], 'g') ~= ARGV[2] then return {0} end
local r = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'j', ARGV[1], 'r', r)
return {1, r}
