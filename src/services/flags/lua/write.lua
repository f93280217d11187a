-- KEYS[1]: definitions (hash key -> JSON), KEYS[2]: versions (hash key ->
-- version), KEYS[3]: the set's meta (hash: doc, version, source_sha),
-- KEYS[4]: the audit stream.
-- ARGV: key, definition ('' deletes), expected version (-1: any; 0: absent),
-- action, actor, channel, set name, max audit entries.
-- Returns {written 0|1, flag version after (0: absent), set version}.
local key = ARGV[1]
local before = redis.call('HGET', KEYS[1], key) or ''
local current = tonumber(redis.call('HGET', KEYS[2], key) or '0')
local set_version = tonumber(redis.call('HGET', KEYS[3], 'version') or '0')
local expected = tonumber(ARGV[3])
if expected >= 0 and current ~= expected then
  return {0, current, set_version}
end
if ARGV[2] == '' and before == '' then
  return {0, 0, set_version}
end
local version = redis.call('HINCRBY', KEYS[3], 'version', 1)
local flag_version = 0
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
else
  redis.call('HSET', KEYS[1], key, ARGV[2])
  redis.call('HSET', KEYS[2], key, version)
  flag_version = version
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'key', key, 'action', ARGV[4],
  'before', before, 'after', ARGV[2], 'actor', ARGV[5], 'version', version)
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {1, flag_version, version}
