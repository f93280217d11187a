-- Token bucket. KEYS[1]: hash {n = tokens, t = end of the last whole refill
-- interval (us)}. ARGV: capacity, refill_amount, refill_interval_us, cost
-- (<= capacity + 1). Returns {allowed, remaining, reset_after_us, retry_after_us or -1}.
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local now = now_us()

local stored = redis.call('HMGET', KEYS[1], 'n', 't')
local tokens = tonumber(stored[1]) or capacity
local last = tonumber(stored[2]) or now
if now > last then
  -- Never more intervals than it takes to fill the bucket.
  local intervals = idiv(now - last, interval)
  local max_intervals = idiv(capacity, refill) + 1
  if intervals > max_intervals then intervals = max_intervals end
  tokens = math.min(capacity, tokens + intervals * refill)
  last = last + intervals * interval
end
if tokens >= capacity then
  -- A full bucket's refill clock starts at its next spend.
  last = now
end

local allowed = cost <= tokens
if allowed then tokens = tokens - cost end

local reset_after = 0
if tokens < capacity then
  reset_after = last + ceil_div(capacity - tokens, refill) * interval - now
end
local retry_after = -1
if not allowed and cost <= capacity then
  retry_after = last + ceil_div(cost - tokens, refill) * interval - now
end

if allowed and cost > 0 then
  redis.call('HSET', KEYS[1], 'n', int(tokens), 't', int(last))
  redis.call('PEXPIRE', KEYS[1], ttl_ms(reset_after))
end
return {allowed and 1 or 0, tokens, reset_after, retry_after}
