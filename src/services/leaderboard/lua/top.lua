-- KEYS[1]: the definition, KEYS[2]: the period's order, KEYS[3]: its
-- records. ARGV: revision, the order key to start after ('' from the top),
-- how many (one more is read to tell whether more follow), order key
-- prefix length.
-- Returns {'ok', first rank, member, record...}, or {'gone'} / {'stale'}.
local bad = lb_check(KEYS[1], ARGV[1])
if bad then return {bad} end
local n = tonumber(ARGV[3])
local members
if ARGV[2] == '' then
  members = redis.call('ZRANGE', KEYS[2], 0, n)
else
  members = redis.call('ZRANGEBYLEX', KEYS[2], '(' .. ARGV[2], '+', 'LIMIT', 0, n + 1)
end
local reply = {'ok', 1}
if #members == 0 then return reply end
reply[2] = redis.call('ZRANK', KEYS[2], members[1]) + 1
return lb_records(reply, KEYS[3], members, tonumber(ARGV[4]))
