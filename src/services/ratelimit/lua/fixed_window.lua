-- Fixed window. KEYS[1]: hash {w = window index, c = count}. Windows are
-- aligned to the server clock. ARGV: limit, window_us, cost (<= limit + 1).
-- Returns {allowed, remaining, reset_after_us, retry_after_us or -1}.
local limit = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = now_us()

local window, elapsed = idiv(now, size)
local stored = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if tonumber(stored[1]) == window then
  count = tonumber(stored[2]) or 0
end

local allowed = count + cost <= limit
local count_after = count
if allowed then count_after = count + cost end
local until_end = size - elapsed
local reset_after = 0
if count_after > 0 then reset_after = until_end end
local retry_after = -1
if not allowed and cost <= limit then retry_after = until_end end

if allowed and cost > 0 then
  redis.call('HSET', KEYS[1], 'w', int(window), 'c', int(count_after), 'p', 0)
  redis.call('PEXPIRE', KEYS[1], ttl_ms(until_end))
end
return {allowed and 1 or 0, limit - count_after, reset_after, retry_after}
