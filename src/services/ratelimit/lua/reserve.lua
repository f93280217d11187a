-- A check that reserves (see reservation.rs). KEYS[1]: the state,
-- KEYS[2]: the reservation's marker, KEYS[3]: the state's reset
-- generation (see reset.lua; all in one slot). ARGV: one check as
-- dispatch.lua takes it. When the check consumes, the marker keeps the
-- state right after the charge {t, n, w} (GCRA's arrival time, or the
-- bucket's refill clock; the bucket's tokens; the window), for as long as
-- the state lives, and the generation it was made in.
-- Returns {allowed, remaining, reset_after_us, retry_after_us or -1}.
local d = run(1, 'c')
if d[1] == 1 and tonumber(ARGV[5]) > 0 then
  local s = redis.call('HMGET', KEYS[1], 't', 'n', 'w')
  local g = redis.call('GET', KEYS[3]) or ''
  redis.call('HSET', KEYS[2], 't', s[1] or '', 'n', s[2] or '', 'w', s[3] or '', 'g', g)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', KEYS[2], ttl)
  -- The generation must outlive every marker that names it.
  if g ~= '' and redis.call('PTTL', KEYS[3]) < ttl then
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
return d
