-- KEYS[1]: the definition, KEYS[2]: the periods index, KEYS[3]: the
-- period's order (a sorted set, every score 0, members are order keys),
-- KEYS[4]: its records (owner → packed record), KEYS[5]: its write
-- counter, KEYS[6]: the idempotency key (KEYS[1] again when none).
-- ARGV: revision, period start ms, period end ms (0: never), expire at ms
-- (0: never), periods kept, owner, score, subscore, operator ('best',
-- 'set', 'incr', 'decr'), sort, tie-break, decrement floor, metadata,
-- idempotency window ms (0: no key), most owners.
-- Returns {'ok', reply} or {'replay', reply} with reply =
-- 'score:subscore:seq:updated:submissions:rank:previous rank:improved:
-- period start:metadata';
-- {'period', now ms} when the write belongs to another period; {'gone'},
-- {'stale'}, {'range'} or {'full'}.
local bad = lb_check(KEYS[1], ARGV[1])
if bad then return {bad} end
local now = idiv(now_us(), 1000)
local start, stop = tonumber(ARGV[2]), tonumber(ARGV[3])
if stop > 0 and (now < start or now >= stop) then return {'period', now} end
local idem_ms = tonumber(ARGV[14])
if idem_ms > 0 then
  local done = redis.call('GET', KEYS[6])
  if done then return {'replay', done} end
end
local owner, score, subscore = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local op, sort, tie, floor = ARGV[9], ARGV[10], ARGV[11], tonumber(ARGV[12])
local packed = redis.call('HGET', KEYS[4], owner)
local os, oss, oseq, oupd, on, ometa
local old, prev = nil, 0
if packed then
  os, oss, oseq, oupd, on, ometa = lb_unpack(packed)
  old = lb_key(sort, tie, os, oss, oseq, owner)
  prev = redis.call('ZRANK', KEYS[3], old) + 1
end
local ns, nss, kept = score, subscore, false
if op == 'best' then
  if packed then
    local better
    if sort == 'desc' then
      better = score > os or (score == os and subscore > oss)
    else
      better = score < os or (score == os and subscore < oss)
    end
    if not better then ns, nss, kept = os, oss, true end
  end
elseif op == 'incr' then
  if packed then ns, nss = os + score, oss + subscore end
elseif op == 'decr' then
  local b, bs = 0, 0
  if packed then b, bs = os, oss end
  -- Down to the floor, and never up (a record already below it stays).
  ns, nss = math.min(b, math.max(b - score, floor)), bs - subscore
end
local limit = 9007199254740991
if math.abs(ns) > limit or math.abs(nss) > limit then return {'range'} end
if not packed and redis.call('HLEN', KEYS[4]) >= tonumber(ARGV[15]) then
  return {'full'}
end
local seq, upd, n, meta = oseq, oupd, on or 0, ometa or ''
if not packed or ns ~= os or nss ~= oss then
  seq = redis.call('INCR', KEYS[5])
  upd = now
end
if not kept and ARGV[13] ~= '' then meta = ARGV[13] end
n = n + 1
local member = lb_key(sort, tie, ns, nss, seq, owner)
if old and old ~= member then redis.call('ZREM', KEYS[3], old) end
redis.call('ZADD', KEYS[3], 0, member)
redis.call('HSET', KEYS[4], owner, lb_pack(ns, nss, seq, upd, n, meta))
local rank = redis.call('ZRANK', KEYS[3], member) + 1
local improved = 0
if old ~= member then improved = 1 end
local at = tonumber(ARGV[4])
if at > 0 then
  for i = 3, 5 do redis.call('PEXPIREAT', KEYS[i], at) end
end
redis.call('ZADD', KEYS[2], 'NX', start, ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 2))
local reply = lb_pack(ns, nss, seq, upd, n,
  int(rank) .. ':' .. int(prev) .. ':' .. improved .. ':' .. ARGV[2] .. ':' .. meta)
if idem_ms > 0 then redis.call('SET', KEYS[6], reply, 'PX', idem_ms) end
return {'ok', reply}
