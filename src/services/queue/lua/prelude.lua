-- Queue helpers. KEYS[1] is the queue's key prefix `dl:<tenant>:q:{<queue>}:`
-- (its hash tag puts every key below in one slot); the names below are
-- suffixes of it:
--   m:<id>     a message (hash): p payload, h headers (JSON), a attempts,
--              ma max attempts, bk backoff, pr priority, g group, ld lease
--              ms, ex expire at (ms; 0 never), at enqueued at, sc ready
--              score, du due, st state (w ready, d delayed, q behind its
--              group, l leased, x dead, c done), tk lease token, le lease
--              expiry, rs dead reason, dt died at, dq dead sequence
--   ready      ids by ready score (priority, then enqueue order)
--   delayed    ids by due time (ms)
--   leased     ids by lease expiry (ms)
--   dead       ids by dead sequence
--   gl         group -> its active message
--   g:<group>  ids queued behind the group's active message, in order
--   dd:<id>    a dedup id -> the first message's id (expires)
--   seq, dseq  counters; paused; stats (totals; n = messages held)
--   r:<minute> enqueues (e) and acks (a) in that minute (expires)
local P = KEYS[1]
local function k(suffix) return P .. suffix end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function count(field, n)
  redis.call('HINCRBY', k('stats'), field, n)
end

local function rate(kind, now, n)
  n = n or 1
  local key = k('r:' .. math.floor(now / 60000))
  -- The first count of a kind in a minute sets the expiry; later counts
  -- need not (one command fewer per script).
  if redis.call('HINCRBY', key, kind, n) == n then
    redis.call('PEXPIRE', key, 180000)
  end
end

-- Ready or delayed, as the message's due time says.
local function place(id, now)
  local m = k('m:' .. id)
  local due = tonumber(redis.call('HGET', m, 'du') or '0')
  if due > now then
    redis.call('ZADD', k('delayed'), due, id)
    redis.call('HSET', m, 'st', 'd')
  else
    redis.call('ZADD', k('ready'), redis.call('HGET', m, 'sc'), id)
    redis.call('HSET', m, 'st', 'w')
  end
end

-- `id` is done with (acked, dead, expired, cancelled): its group's next
-- message becomes the active one. `g`: its group, when the caller has
-- read it already (nil: read here).
local function release_group(id, now, g)
  if g == nil then g = redis.call('HGET', k('m:' .. id), 'g') end
  if not g or g == '' then return end
  if redis.call('HGET', k('gl'), g) ~= id then return end
  local nxt = redis.call('LPOP', k('g:' .. g))
  if nxt then
    redis.call('HSET', k('gl'), g, nxt)
    place(nxt, now)
  else
    redis.call('HDEL', k('gl'), g)
  end
end

local function to_dead(id, now, reason)
  local m = k('m:' .. id)
  local dq = redis.call('INCR', k('dseq'))
  redis.call('HSET', m, 'st', 'x', 'rs', reason, 'dt', now, 'dq', dq, 'tk', '')
  redis.call('ZADD', k('dead'), dq, id)
  count('dead', 1)
  release_group(id, now)
end

-- `f:<ms>`, or `e:<initial>:<max>:<jitter>` (full jitter: 0 to the delay).
local function backoff(spec, attempt, random)
  local kind, a, b, j = string.match(spec, '^(%a):(%d+):?(%d*):?(%d*)$')
  if kind == 'f' then return tonumber(a) end
  local full = math.min(tonumber(b), tonumber(a) * 2 ^ math.min(attempt - 1, 40))
  if j == '1' then return math.floor(full * random) end
  return math.floor(full)
end

-- A delivery failed: retry after `after` ms (negative: the backoff), or,
-- its attempts used up, to the dead letters. Answers whether it died. A
-- group's message stays the group's active one while it is retried.
local function retry_or_dead(id, now, after, reason, random)
  local m = k('m:' .. id)
  local f = redis.call('HMGET', m, 'a', 'ma', 'bk')
  local attempts, most = tonumber(f[1]), tonumber(f[2])
  if attempts >= most then
    to_dead(id, now, reason)
    return true
  end
  local delay = after
  if delay < 0 then
    -- Each message its own draw of the jitter.
    delay = backoff(f[3], attempts, (random + tonumber(id) * 0.6180339887) % 1)
  end
  redis.call('HSET', m, 'du', now + delay, 'tk', '', 'st', 'd')
  redis.call('ZADD', k('delayed'), now + delay, id)
  count('retried', 1)
  return false
end

-- Leases that ran out are failed deliveries (whoever calls first sees
-- them, once: this runs inside one script).
local function reap(now, random)
  local gone = redis.call('ZRANGEBYSCORE', k('leased'), '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(gone) do
    redis.call('ZREM', k('leased'), id)
    retry_or_dead(id, now, -1, 'lease expired', random)
  end
end

-- Delayed messages that are due become ready.
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', k('delayed'), '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    local m = k('m:' .. id)
    redis.call('ZREM', k('delayed'), id)
    redis.call('ZADD', k('ready'), redis.call('HGET', m, 'sc'), id)
    redis.call('HSET', m, 'st', 'w')
  end
end

-- What one script's enqueues did to the queue's counters: `held` messages
-- (the queue's `n` as they go), `added` by this script. Read once, written
-- once by `enqueued`, however many messages the script enqueues.
local function tally()
  return {held = tonumber(redis.call('HGET', k('stats'), 'n') or '0'), added = 0}
end

local function enqueued(t, now)
  if t.added == 0 then return end
  count('n', t.added)
  count('enqueued', t.added)
  rate('e', now, t.added)
end

-- Enqueues the message whose 12 fields start at ARGV[i]: payload,
-- headers, dedup id, dedup window ms, delay ms, not before ms, priority,
-- group, max attempts, backoff, lease ms, expire at ms. Answers {1, id}
-- new, {2, id} a duplicate of `id`, {0, ''} the queue is full. `t` is the
-- script's tally (see `tally`).
local function enqueue_one(i, now, most, t)
  local dd = ARGV[i + 2]
  if dd ~= '' then
    local first = redis.call('GET', k('dd:' .. dd))
    if first then return {2, first} end
  end
  if t.held >= most then return {0, ''} end
  local seq = redis.call('INCR', k('seq'))
  local id = tostring(seq)
  local pr = tonumber(ARGV[i + 6])
  local due = math.max(now + tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]))
  local g = ARGV[i + 7]
  -- Behind its group's active message, delayed, or ready: decided before
  -- the message is written, so it is written once.
  local behind = g ~= '' and redis.call('HSETNX', k('gl'), g, id) == 0
  local st = 'w'
  if behind then st = 'q' elseif due > now then st = 'd' end
  local sc = (9 - pr) * 17592186044416 + seq
  redis.call('HSET', k('m:' .. id), 'p', ARGV[i], 'h', ARGV[i + 1], 'a', 0,
    'ma', ARGV[i + 8], 'bk', ARGV[i + 9], 'pr', pr, 'g', g, 'ld', ARGV[i + 10],
    'ex', ARGV[i + 11], 'at', now, 'sc', sc, 'du', due, 'st', st)
  if dd ~= '' then redis.call('SET', k('dd:' .. dd), id, 'PX', ARGV[i + 3]) end
  if behind then
    redis.call('RPUSH', k('g:' .. g), id)
  elseif st == 'd' then
    redis.call('ZADD', k('delayed'), due, id)
  else
    redis.call('ZADD', k('ready'), sc, id)
  end
  t.held = t.held + 1
  t.added = t.added + 1
  return {1, id}
end
