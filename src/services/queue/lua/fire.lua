-- KEYS[1]: the queue's prefix. ARGV: schedule id, the next run expected
-- (ms), the run after it, most messages, then the message's 12 fields.
-- Returns 1: this call fired the tick; 0: another did, or it changed.
local now = now_ms()
local at = redis.call('ZSCORE', k('next'), ARGV[1])
if not at or tonumber(at) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', k('next'), ARGV[3], ARGV[1])
local t = tally()
enqueue_one(5, now, tonumber(ARGV[4]), t)
enqueued(t, now)
return 1
