-- KEYS[1]: the queue's prefix. ARGV: done retention ms, then pairs of id
-- and lease token (the acks that arrived together: one script for all).
-- Returns, per pair, 1 acked, 2 acked before under this lease, 0 lease
-- lost (the message was delivered again, died, or is gone).
local now = now_ms()
local out = {}
local acked = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local m = k('m:' .. id)
  local f = redis.call('HMGET', m, 'st', 'tk', 'g')
  local status = 0
  if f[1] and f[2] == ARGV[i + 1] then
    if f[1] == 'c' then
      status = 2
    elseif f[1] == 'l' then
      redis.call('ZREM', k('leased'), id)
      release_group(id, now, f[3])
      redis.call('HDEL', m, 'p', 'h')
      redis.call('HSET', m, 'st', 'c')
      redis.call('PEXPIRE', m, ARGV[1])
      acked = acked + 1
      status = 1
    end
  end
  out[#out + 1] = status
end
if acked > 0 then
  count('n', -acked)
  count('acked', acked)
  rate('a', now, acked)
end
return out
