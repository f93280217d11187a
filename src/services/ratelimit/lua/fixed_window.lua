-- Fixed window on a hash {w = window index, c = count}: at most `limit` per
-- window of `size` us, windows aligned to the server clock. `mode` as for
-- gcra. Returns {allowed, remaining, reset_after_us, retry_after_us or -1}.
local function fixed_window(key, limit, size, cost, mode)
  local now = now_us()
  local window, elapsed = idiv(now, size)
  local stored = redis.call('HMGET', key, 'w', 'c')
  local count = 0
  if tonumber(stored[1]) == window then
    count = tonumber(stored[2]) or 0
  end

  local allowed = count + cost <= limit
  local consume = mode == 'f' or (allowed and mode == 'c')
  local count_after = count
  if consume then count_after = count + cost end
  local until_end = size - elapsed
  local reset_after = 0
  if count_after > 0 then reset_after = until_end end
  local retry_after = -1
  if not allowed and cost <= limit then retry_after = until_end end

  if consume and cost > 0 then
    redis.call('HSET', key, 'w', int(window), 'c', int(count_after), 'p', 0)
    redis.call('PEXPIRE', key, ttl_ms(until_end))
  end
  local remaining = limit - count_after
  if remaining < 0 then remaining = 0 end
  return {allowed and 1 or 0, remaining, reset_after, retry_after}
end
