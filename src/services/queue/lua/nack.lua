-- KEYS[1]: the queue's prefix. ARGV: id, lease token, retry after ms (-1:
-- the message's backoff), dead now (0/1), reason, random in [0, 1).
-- Returns 2 dead, 1 retried later, 0 lease lost.
local now = now_ms()
local id = ARGV[1]
local f = redis.call('HMGET', k('m:' .. id), 'st', 'tk')
if f[1] ~= 'l' or f[2] ~= ARGV[2] then return 0 end
redis.call('ZREM', k('leased'), id)
local reason = ARGV[5]
if reason == '' then reason = 'nacked' end
if ARGV[4] == '1' then
  to_dead(id, now, reason)
  return 2
end
if retry_or_dead(id, now, tonumber(ARGV[3]), reason, tonumber(ARGV[6])) then return 2 end
return 1
