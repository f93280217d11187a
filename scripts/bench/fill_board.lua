-- Appended by scripts/bench.sh to the shared prelude
-- (src/store/redis/lua/prelude.lua) and the leaderboard prelude
-- (src/services/leaderboard/lua/prelude.lua), so members and records are
-- built by the service's own lb_key / lb_pack, exactly as submit.lua
-- writes them for a descending board with tie-break earliest.
-- KEYS[1]: the period's order (z), KEYS[2]: its records (h), KEYS[3]: its
-- write counter (n), KEYS[4]: the board's periods index (p).
-- ARGV[1], ARGV[2]: the first and last owner number; ARGV[3]: the write
-- counter to leave (the number of owners).
-- Owner i is 'owner:%07d', score i, subscore 0, written as write number i.
local now = idiv(now_us(), 1000)
local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
local batch = 500
local i = from
while i <= to do
  local last = math.min(i + batch - 1, to)
  local z, h = {}, {}
  for j = i, last do
    local owner = string.format('owner:%07d', j)
    z[#z + 1] = 0
    z[#z + 1] = lb_key('desc', 'earliest', j, 0, j, owner)
    h[#h + 1] = owner
    h[#h + 1] = lb_pack(j, 0, j, now, 1, '')
  end
  redis.call('ZADD', KEYS[1], unpack(z))
  redis.call('HSET', KEYS[2], unpack(h))
  i = last + 1
end
redis.call('SET', KEYS[3], ARGV[3])
-- What submit.lua adds for the period of a board that never resets.
redis.call('ZADD', KEYS[4], 'NX', 0, '0')
return {redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[2])}
