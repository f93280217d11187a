-- KEYS[1]: the definition (a hash: j = JSON, r = revision, g = generation),
-- KEYS[2]: the board's revision counter (kept across deletes).
-- ARGV[1]: the definition's JSON.
-- Returns {1, generation} created, {0} the id is taken.
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local g = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'j', ARGV[1], 'r', g, 'g', g)
return {1, g}
