-- KEYS[1]: the queue's prefix. ARGV: pairs of id and lease token, of
-- deliveries that never reached their consumer (its stream was gone when
-- they were to be sent). Each still under that lease is ready again at
-- once, at its old place, and the attempt its lease counted is taken back.
-- Returns how many were given back.
local given = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local m = k('m:' .. id)
  local f = redis.call('HMGET', m, 'st', 'tk', 'sc')
  if f[1] == 'l' and f[2] == ARGV[i + 1] then
    redis.call('ZREM', k('leased'), id)
    redis.call('HINCRBY', m, 'a', -1)
    redis.call('HSET', m, 'st', 'w', 'tk', '')
    redis.call('ZADD', k('ready'), f[3], id)
    given = given + 1
  end
end
return given
