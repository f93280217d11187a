-- KEYS[1]: the definition, KEYS[2]: the period's order, KEYS[3]: its
-- records. ARGV: revision, owner, sort, tie-break.
-- Returns {'ok', 1} deleted, {'ok', 0} no record, or {'gone'} / {'stale'}.
local bad = lb_check(KEYS[1], ARGV[1])
if bad then return {bad} end
local packed = redis.call('HGET', KEYS[3], ARGV[2])
if not packed then return {'ok', 0} end
local s, ss, seq = lb_unpack(packed)
redis.call('ZREM', KEYS[2], lb_key(ARGV[3], ARGV[4], s, ss, seq, ARGV[2]))
redis.call('HDEL', KEYS[3], ARGV[2])
return {'ok', 1}
