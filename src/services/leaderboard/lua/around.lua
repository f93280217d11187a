-- KEYS[1]: the definition, KEYS[2]: the period's order, KEYS[3]: its
-- records. ARGV: revision, owner, how many above, how many below, sort,
-- tie-break, order key prefix length.
-- Returns {'ok', first rank, member, record...} (no members: the owner has
-- no record), or {'gone'} / {'stale'}.
local bad = lb_check(KEYS[1], ARGV[1])
if bad then return {bad} end
local packed = redis.call('HGET', KEYS[3], ARGV[2])
if not packed then return {'ok', 0} end
local s, ss, seq = lb_unpack(packed)
local rank = redis.call('ZRANK', KEYS[2], lb_key(ARGV[5], ARGV[6], s, ss, seq, ARGV[2]))
if not rank then return {'ok', 0} end
local from = rank - tonumber(ARGV[3])
if from < 0 then from = 0 end
local members = redis.call('ZRANGE', KEYS[2], from, rank + tonumber(ARGV[4]))
return lb_records({'ok', from + 1}, KEYS[3], members, tonumber(ARGV[7]))
