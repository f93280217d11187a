-- KEYS[1]: entry, KEYS[2]: its lease. ARGV[1]: a tag.
-- Deletes the entry and its lease if the entry still carries the tag (an
-- entry re-set without it since it was indexed survives). With no entry,
-- a lease is voided anyway: its holder may be computing a value tagged so.
-- Returns 1 if an entry was deleted.
local e = cache_read(KEYS[1], now_us())
if not e then
  redis.call('DEL', KEYS[2])
  return 0
end
if not has_tag(e[7], ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
