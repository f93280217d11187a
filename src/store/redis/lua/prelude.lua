-- Shared helpers, prepended to every datalayer script at compile time.

-- Microseconds on the server's clock: replicas and callers with skewed clocks
-- all see the one time Redis sees.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Integer division and remainder. math.fmod is exact for doubles, while
-- math.floor(a / b) can round up when a / b is just below an integer.
local function idiv(a, b)
  local m = math.fmod(a, b)
  return (a - m) / b, m
end

local function ceil_div(a, b)
  local q, m = idiv(a, b)
  if m > 0 then q = q + 1 end
  return q
end

-- PEXPIRE milliseconds for a TTL in microseconds: rounded up, at least 1.
local function ttl_ms(us)
  local ms = ceil_div(us, 1000)
  if ms < 1 then ms = 1 end
  return ms
end

-- Integers as plain digits (never exponent notation) when stored.
local function int(n)
  return string.format('%.0f', n)
end
