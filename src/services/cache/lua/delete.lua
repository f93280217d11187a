-- KEYS[1]: entry, KEYS[2]: its lease. Returns {deleted (0/1), tags}.
local e = cache_read(KEYS[1], now_us())
redis.call('DEL', KEYS[1], KEYS[2])
if not e then return {0, ''} end
return {1, e[7]}
