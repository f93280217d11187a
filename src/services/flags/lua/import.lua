-- KEYS as write.lua. ARGV: meta JSON, replace (0|1), source sha ('': keep),
-- actor, channel, set name, max audit entries, then key, definition pairs.
-- Returns {set version, key, change type, key, change type, ...} with change
-- types 1 write, 2 update, 3 delete; no change bumps no version.
local changes = {}
local named = {}
for i = 8, #ARGV, 2 do
  local key, definition = ARGV[i], ARGV[i + 1]
  named[key] = true
  local current = redis.call('HGET', KEYS[1], key)
  if not current then
    changes[#changes + 1] = {key, 1, definition}
  elseif current ~= definition then
    changes[#changes + 1] = {key, 2, definition}
  end
end
if ARGV[2] == '1' then
  for _, key in ipairs(redis.call('HKEYS', KEYS[1])) do
    if not named[key] then changes[#changes + 1] = {key, 3, ''} end
  end
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], 'source_sha', ARGV[3]) end
local meta = redis.call('HGET', KEYS[3], 'doc') or ''
if #changes == 0 and meta == ARGV[1] then
  return {tonumber(redis.call('HGET', KEYS[3], 'version') or '0')}
end
local version = redis.call('HINCRBY', KEYS[3], 'version', 1)
redis.call('HSET', KEYS[3], 'doc', ARGV[1])
local out = {version}
for _, c in ipairs(changes) do
  local key, kind, definition = c[1], c[2], c[3]
  local before = redis.call('HGET', KEYS[1], key) or ''
  if kind == 3 then
    redis.call('HDEL', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
  else
    redis.call('HSET', KEYS[1], key, definition)
    redis.call('HSET', KEYS[2], key, version)
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'key', key, 'action', 'import',
    'before', before, 'after', definition, 'actor', ARGV[4], 'version', version)
  out[#out + 1] = key
  out[#out + 1] = kind
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return out
