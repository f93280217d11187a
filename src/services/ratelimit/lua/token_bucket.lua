-- Token bucket on a hash {n = tokens, t = end of the last whole refill
-- interval (us)}: `capacity` tokens, `refill` more every `interval` us.
-- `mode` as for gcra; a forced spend may leave the bucket below zero.
-- Returns {allowed, remaining, reset_after_us, retry_after_us or -1}.
local function token_bucket(key, capacity, refill, interval, cost, mode)
  local now = now_us()
  local stored = redis.call('HMGET', key, 'n', 't')
  local tokens = tonumber(stored[1]) or capacity
  local last = tonumber(stored[2]) or now
  if now > last then
    -- Never more intervals than it takes to fill the bucket (from below
    -- zero too).
    local intervals = idiv(now - last, interval)
    local deficit = capacity
    if tokens < 0 then deficit = capacity - tokens end
    local max_intervals = idiv(deficit, refill) + 1
    if intervals > max_intervals then intervals = max_intervals end
    tokens = math.min(capacity, tokens + intervals * refill)
    last = last + intervals * interval
  end
  if tokens >= capacity then
    -- A full bucket's refill clock starts at its next spend.
    last = now
  end

  local allowed = cost <= tokens
  local consume = mode == 'f' or (allowed and mode == 'c')
  if consume then tokens = tokens - cost end

  local reset_after = 0
  if tokens < capacity then
    reset_after = last + ceil_div(capacity - tokens, refill) * interval - now
  end
  local retry_after = -1
  if not allowed and cost <= capacity then
    retry_after = last + ceil_div(cost - tokens, refill) * interval - now
  end

  if consume and cost > 0 then
    redis.call('HSET', key, 'n', int(tokens), 't', int(last))
    redis.call('PEXPIRE', key, ttl_ms(reset_after))
  end
  local remaining = tokens
  if remaining < 0 then remaining = 0 end
  return {allowed and 1 or 0, remaining, reset_after, retry_after}
end
