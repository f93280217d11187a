-- Sliding window over two fixed windows, on a hash {w = current window
-- index, c = its count, p = the previous window's count}: at most `limit`
-- per rolling `size` us. `mode` as for gcra.
-- Returns {allowed, remaining, reset_after_us, retry_after_us or -1}.
local function sliding_window(key, limit, size, cost, mode)
  local now = now_us()
  local window, elapsed = idiv(now, size)
  local stored = redis.call('HMGET', key, 'w', 'c', 'p')
  local stored_window = tonumber(stored[1])
  local count, prev = 0, 0
  if stored_window == window then
    count = tonumber(stored[2]) or 0
    prev = tonumber(stored[3]) or 0
  elseif stored_window == window - 1 then
    prev = tonumber(stored[2]) or 0
  end

  -- The previous window counts by how much of it the rolling window covers.
  local weight = (size - elapsed) / size
  local prev_weighted = math.floor(prev * weight)
  local allowed = prev_weighted + count + cost <= limit
  local consume = mode == 'f' or (allowed and mode == 'c')
  local count_after = count
  if consume then count_after = count + cost end
  local until_end = size - elapsed
  local used = prev_weighted + count_after
  if used > limit then used = limit end

  local reset_after = 0
  if count_after > 0 then
    reset_after = until_end + size
  elseif prev_weighted > 0 then
    reset_after = until_end
  end

  local retry_after = -1
  if not allowed and cost <= limit then
    if count + cost <= limit then
      -- Wait, inside this window, for the previous one's share to shrink.
      local room = limit - count - cost
      local target = size - ((room + 1) * size) / prev
      retry_after = math.floor(target) + 1 - elapsed
      if retry_after < 1 then retry_after = 1 end
    else
      -- Wait for the next window, where this one becomes the previous.
      local room = limit - cost
      if count <= room then
        retry_after = until_end
      else
        local target = size - ((room + 1) * size) / count
        retry_after = until_end + math.floor(target) + 1
      end
    end
  end

  if consume and cost > 0 then
    redis.call('HSET', key, 'w', int(window), 'c', int(count_after), 'p', int(prev))
    redis.call('PEXPIRE', key, ttl_ms(until_end + size))
  end
  return {allowed and 1 or 0, limit - used, reset_after, retry_after}
end
