-- KEYS[1]: the queue's prefix. ARGV: id. Returns 1 deleted, 0 none.
redis.call('ZREM', k('next'), ARGV[1])
return redis.call('HDEL', k('sched'), ARGV[1])
