-- KEYS[1]: entry. Returns {0} or {1, value, content_type, version, ttl_us,
-- stale, expires_in_us, tags}.
local e = cache_read(KEYS[1], now_us())
if not e then return {0} end
return {1, e[1], e[2], e[3], e[4], e[5], e[6], e[7]}
