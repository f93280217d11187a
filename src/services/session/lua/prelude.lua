-- Session helpers. A session is a hash of SESSION_FIELDS at <prefix><token
-- hash>: public id, user id, data (a JSON object), version, created and
-- last seen (us), idle TTL (us), absolute expiry (us), client IP, user
-- agent. The key expires at the earlier of the idle and absolute expiry.
-- A user's index, in the same slot, is a sorted set of token hashes scored
-- by creation time; members whose session has gone are pruned as it is read.

local SESSION_FIELDS = {'sid', 'uid', 'data', 'ver', 'ca', 'ls', 'idle', 'abs', 'ip', 'ua'}

local function session_expires_at(s)
  return math.min(tonumber(s[6]) + tonumber(s[7]), tonumber(s[8]))
end

-- The live session at key as the values of SESSION_FIELDS, or nil.
local function session_read(key, now)
  local s = redis.call('HMGET', key, unpack(SESSION_FIELDS))
  if not s[1] or session_expires_at(s) <= now then return nil end
  return s
end

local function session_expire(key, s)
  redis.call('PEXPIREAT', key, ceil_div(session_expires_at(s), 1000))
end

-- The user's live token hashes, oldest first. Users whose ids share a slot
-- tag share an index, so members are matched on the stored user id. With
-- `prune`, members whose session has gone leave the index.
local function session_members(index, prefix, uid, now, prune)
  local mine = {}
  for _, h in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local s = session_read(prefix .. h, now)
    if not s then
      if prune then redis.call('ZREM', index, h) end
    elseif s[2] == uid then
      mine[#mine + 1] = h
    end
  end
  return mine
end
