-- KEYS[1]: the definition, KEYS[2]: the period's order, KEYS[3]: its
-- records. ARGV: revision, sort, tie-break, owners...
-- Returns {'ok', owners in the period, rank, record, rank, record...}
-- (rank 0 and '' for an owner without a record), or {'gone'} / {'stale'}.
local bad = lb_check(KEYS[1], ARGV[1])
if bad then return {bad} end
local reply = {'ok', redis.call('HLEN', KEYS[3])}
for i = 4, #ARGV do
  local packed = redis.call('HGET', KEYS[3], ARGV[i])
  local rank = 0
  if packed then
    local s, ss, seq = lb_unpack(packed)
    rank = (redis.call('ZRANK', KEYS[2], lb_key(ARGV[2], ARGV[3], s, ss, seq, ARGV[i])) or -1) + 1
  end
  reply[#reply + 1] = rank
  reply[#reply + 1] = packed or ''
end
return reply
