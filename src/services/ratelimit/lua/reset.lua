-- Forgets a target's state, and voids the reservations made on it.
-- KEYS[1]: the state, KEYS[2]: its reset generation (same slot).
-- ARGV[1]: the channel that tells replicas to drop cached denials ('':
-- none), ARGV[2]: the caller key to tell them.
--
-- A marker names the generation it was made in (reserve.lua), and a settle
-- whose marker names an older one gives nothing back. A marker lives no
-- longer than its state did when it was made, and a state's expiry only
-- moves later while it lives, so a generation that outlives the state's
-- current TTL outlives every marker made before this reset. With no state
-- there is no marker to void.
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
if ttl > 0 then
  redis.call('INCR', KEYS[2])
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return 1
