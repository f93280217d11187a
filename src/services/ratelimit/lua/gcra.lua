-- GCRA on a hash {t = theoretical arrival time (us), f = fraction of a
-- microsecond in units of 1/limit}: `limit` per `period` us. `mode`: 'c'
-- consumes `cost` (<= limit + 1) if it fits, 'd' only decides, 'f' consumes
-- it whether or not it fits (usage reported after the fact).
-- Returns {allowed, remaining, reset_after_us, retry_after_us or -1}.
local function gcra(key, limit, period, cost, mode)
  local now = now_us()
  -- Emission interval = q + r / limit microseconds, exact.
  local q, r = idiv(period, limit)
  local stored = redis.call('HMGET', key, 't', 'f')
  local tat = tonumber(stored[1]) or now
  local frac = tonumber(stored[2]) or 0
  if tat < now then
    tat = now
    frac = 0
  end

  local add = cost * r + frac
  local carry, new_frac = idiv(add, limit)
  local new_tat = tat + cost * q + carry
  local new_diff = new_tat - now
  local allowed = new_diff < period or (new_diff == period and new_frac == 0)
  local consume = mode == 'f' or (allowed and mode == 'c')

  local tat_after, frac_after = tat, frac
  if consume then
    tat_after, frac_after = new_tat, new_frac
  end
  local diff_after = tat_after - now
  local used = math.ceil((diff_after * limit + frac_after) / period)
  if used > limit then used = limit end
  local remaining = limit - used
  local reset_after = diff_after
  if frac_after > 0 then reset_after = reset_after + 1 end

  local retry_after = -1
  if not allowed and cost <= limit then
    retry_after = new_tat - period - now
    if new_frac > 0 then retry_after = retry_after + 1 end
  end

  if consume and cost > 0 then
    redis.call('HSET', key, 't', int(tat_after), 'f', int(frac_after))
    redis.call('PEXPIRE', key, ttl_ms(reset_after))
  end
  return {allowed and 1 or 0, remaining, reset_after, retry_after}
end
