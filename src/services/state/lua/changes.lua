-- KEYS[1]: the log, KEYS[2]: seq. ARGV: after (a stream id; '' for "from
-- now on"), most changes to answer.
-- Returns {last id, last write number, {id, key, type, number}...}: the
-- changes after `after`, or, with no `after`, none: where to start from.
if ARGV[1] == '' then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
  if #last == 0 then return {'0-0', seq} end
  return {last[1][1], seq}
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local out = {ARGV[1], 0}
for _, e in ipairs(entries) do
  local f = e[2]
  local change = {e[1], '', '', '0'}
  for i = 1, #f, 2 do
    if f[i] == 'k' then change[2] = f[i + 1]
    elseif f[i] == 't' then change[3] = f[i + 1]
    elseif f[i] == 's' then change[4] = f[i + 1] end
  end
  out[#out + 1] = change
  out[1] = e[1]
end
return out
