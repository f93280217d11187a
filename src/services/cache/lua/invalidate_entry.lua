-- KEYS[1]: entry, KEYS[2]: its lease. ARGV[1]: a tag.
-- Voids any lease (its holder may be computing a value tagged so, and its
-- write checks the tag's time only if it read that before this ran), and
-- deletes the entry if it still carries the tag: an entry re-set without
-- it since it was indexed survives. Returns 1 if an entry was deleted.
redis.call('DEL', KEYS[2])
local e = cache_read(KEYS[1], now_us())
if not e or not has_tag(e[7], ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
