-- Cache helpers. An entry is a hash {v = value, ct = content type, ver =
-- version, fu = fresh until (us), ea = expires at (us), tg = tags joined by
-- newlines}; the key itself expires at `ea`. A lease is a hash {t = token,
-- at = issued at (us)} beside it, expiring with the lease.

-- The live entry as {value, content_type, version, ttl_us, stale, expires_in_us, tags},
-- or nil.
local function cache_read(key, now)
  local e = redis.call('HMGET', key, 'v', 'ct', 'ver', 'fu', 'ea', 'tg')
  local expires_at = tonumber(e[5])
  if not e[1] or not expires_at or expires_at <= now then return nil end
  local ttl = tonumber(e[4]) - now
  local stale = 0
  if ttl <= 0 then
    ttl = 0
    stale = 1
  end
  return {e[1], e[2] or '', e[3], ttl, stale, expires_at - now, e[6] or ''}
end

local function has_tag(joined, tag)
  for t in string.gmatch(joined, '[^\n]+') do
    if t == tag then return true end
  end
  return false
end
