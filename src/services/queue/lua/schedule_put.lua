-- KEYS[1]: the queue's prefix. ARGV: id, definition, next run ms, most
-- schedules. Returns 1 stored, 0 refused: the queue has the most.
if redis.call('HEXISTS', k('sched'), ARGV[1]) == 0
  and redis.call('HLEN', k('sched')) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', k('sched'), ARGV[1], ARGV[2])
redis.call('ZADD', k('next'), ARGV[3], ARGV[1])
return 1
