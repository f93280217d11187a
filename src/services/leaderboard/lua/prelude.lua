-- Leaderboard helpers: order keys (the same as model.rs builds), packed
-- records, and the definition check every script starts with.

-- A value in ascending byte order: a sign digit, then 16 digits (their
-- nines' complement below zero). |v| < 2^53, so every digit is exact.
local function lb_asc(v)
  local d = string.format('%016.0f', math.abs(v))
  if v >= 0 then return '1' .. d end
  local nines = string.gsub(d, '%d', function(c)
    return string.char(105 - string.byte(c))
  end)
  return '0' .. nines
end

-- The order key: score, subscore, tie-break, owner. `sort`: 'asc' or
-- 'desc'; `tie`: 'earliest', 'latest' or 'owner'.
local function lb_key(sort, tie, score, subscore, seq, owner)
  local k
  if sort == 'desc' then
    k = lb_asc(-score) .. lb_asc(-subscore)
  else
    k = lb_asc(score) .. lb_asc(subscore)
  end
  if tie == 'earliest' then
    k = k .. string.format('%015.0f', seq)
  elseif tie == 'latest' then
    k = k .. string.format('%015.0f', 999999999999999 - seq)
  end
  return k .. owner
end

-- A record: 'score:subscore:seq:updated ms:submissions:metadata'.
local function lb_pack(score, subscore, seq, updated, submissions, rest)
  return int(score) .. ':' .. int(subscore) .. ':' .. int(seq) .. ':' ..
    int(updated) .. ':' .. int(submissions) .. ':' .. rest
end

local function lb_unpack(v)
  local s, ss, seq, upd, n, pos =
    string.match(v, '^(%-?%d+):(%-?%d+):(%d+):(%d+):(%d+):()')
  return tonumber(s), tonumber(ss), tonumber(seq), tonumber(upd), tonumber(n),
    string.sub(v, pos)
end

-- nil when the definition at `def` is at revision `rev`; else why not:
-- 'gone' (deleted) or 'stale' (changed since the caller read it).
local function lb_check(def, rev)
  local r = redis.call('HGET', def, 'r')
  if not r then return 'gone' end
  if r ~= rev then return 'stale' end
  return nil
end

-- Appends each member and its owner's record to `reply`; an owner is
-- what follows the first `plen` bytes of its member.
local function lb_records(reply, h, members, plen)
  for _, m in ipairs(members) do
    reply[#reply + 1] = m
    reply[#reply + 1] = redis.call('HGET', h, string.sub(m, plen + 1)) or ''
  end
  return reply
end
