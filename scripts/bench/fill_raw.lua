-- The raw baseline board: KEYS[1] a sorted set of 'member:%012d' (the
-- form redis-benchmark gives __rand_int__ with -r), member i at score i.
-- ARGV[1], ARGV[2]: the first and last member number.
local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
local batch = 500
local i = from
while i <= to do
  local last = math.min(i + batch - 1, to)
  local z = {}
  for j = i, last do
    z[#z + 1] = j
    z[#z + 1] = string.format('member:%012d', j)
  end
  redis.call('ZADD', KEYS[1], unpack(z))
  i = last + 1
end
return redis.call('ZCARD', KEYS[1])
