-- KEYS[1]: the queue's prefix. ARGV[1]: most messages the queue holds;
-- then 12 fields per message (see enqueue_one).
-- Returns, per message, {1, id} new, {2, id} duplicate, {0, ''} full.
local now = now_ms()
local most = tonumber(ARGV[1])
local t = tally()
local out = {}
for i = 2, #ARGV, 12 do
  out[#out + 1] = enqueue_one(i, now, most, t)
end
enqueued(t, now)
return out
