-- KEYS[1]: the definition, KEYS[2]: the periods index.
-- ARGV[1]: the generation the caller read, ARGV[2]: the prefix of the
-- generation's period keys (`<prefix>:<start>:z|h|n`, same hash slot).
-- Period keys trimmed from the index expire by their own TTL.
-- Returns 1 deleted, 0 no such board (or another generation).
if redis.call('HGET', KEYS[1], 'g') ~= ARGV[1] then return 0 end
for _, start in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local p = ARGV[2] .. ':' .. start
  redis.call('DEL', p .. ':z', p .. ':h', p .. ':n')
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
