-- State helpers. A collection's keys share its hash tag: each document is a
-- hash {v = value, ct = content type, ver = version} at <prefix><key>; the
-- index (a sorted set, all scores 0, so ordered by key) lists the keys;
-- `exp` (a sorted set scored by expiry, ms) holds the keys that expire; `seq`
-- numbers every write (a document's version is the number of the write
-- that made it); `log` (a stream) records each numbered write for Watch, so
-- a watcher that sees a number missing knows it fell behind the log.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drops from the index the keys whose document expired.
local function prune(idx, exp, now)
  local gone = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 100)
  if #gone > 0 then
    redis.call('ZREM', idx, unpack(gone))
    redis.call('ZREM', exp, unpack(gone))
  end
end

local function log_change(log, max, key, kind, seq)
  redis.call('XADD', log, 'MAXLEN', '~', max, '*', 'k', key, 't', kind, 's', seq)
end
