-- KEYS[1]: index, KEYS[2]: exp. Returns the live documents' count.
local now = now_ms()
return redis.call('ZCARD', KEYS[1]) - redis.call('ZCOUNT', KEYS[2], '-inf', now)
