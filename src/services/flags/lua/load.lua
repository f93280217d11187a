-- KEYS[1]: definitions, KEYS[2]: versions, KEYS[3]: meta.
-- Returns {exists 0|1, meta doc, set version, source sha, {key, definition,
-- version, ...}}, one snapshot.
if redis.call('EXISTS', KEYS[3]) == 0 then return {0} end
local m = redis.call('HMGET', KEYS[3], 'doc', 'version', 'source_sha')
local flags = {}
local defs = redis.call('HGETALL', KEYS[1])
for i = 1, #defs, 2 do
  flags[#flags + 1] = defs[i]
  flags[#flags + 1] = defs[i + 1]
  flags[#flags + 1] = redis.call('HGET', KEYS[2], defs[i]) or '0'
end
return {1, m[1] or '', m[2] or '0', m[3] or '', flags}
