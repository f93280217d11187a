-- KEYS[1]: the queue's prefix. Read only (it works on a full Redis).
-- Returns {waiting, delayed, leased, dead, oldest waiting enqueued at (-1:
-- none), paused, enqueued, acked, retried, dead total, expired, enqueues
-- last minute, previous minute, acks this minute, previous, ms into minute}.
local now = now_ms()
local s = redis.call('HMGET', k('stats'), 'n', 'enqueued', 'acked', 'retried', 'dead', 'expired')
local function num(v) return tonumber(v or '0') end
local ready = redis.call('ZCARD', k('ready'))
local delayed = redis.call('ZCARD', k('delayed'))
-- A lease that ran out is noticed (its message retried or buried) by the
-- next Lease; until then it counts as waiting, not leased.
local leased = redis.call('ZCOUNT', k('leased'), '(' .. now, '+inf')
local expired = redis.call('ZCARD', k('leased')) - leased
local dead = redis.call('ZCARD', k('dead'))
-- Messages behind their group's active one are waiting too.
local waiting = math.max(ready + expired, num(s[1]) - delayed - leased - dead)
local oldest = -1
for _, id in ipairs(redis.call('ZRANGE', k('ready'), 0, 99)) do
  local at = tonumber(redis.call('HGET', k('m:' .. id), 'at') or '-1')
  if at >= 0 and (oldest < 0 or at < oldest) then oldest = at end
end
local minute = math.floor(now / 60000)
local cur = redis.call('HMGET', k('r:' .. minute), 'e', 'a')
local prev = redis.call('HMGET', k('r:' .. (minute - 1)), 'e', 'a')
return {waiting, delayed, leased, dead, oldest, redis.call('EXISTS', k('paused')),
  num(s[2]), num(s[3]), num(s[4]), num(s[5]), num(s[6]),
  num(cur[1]), num(prev[1]), num(cur[2]), num(prev[2]), now % 60000, now}
