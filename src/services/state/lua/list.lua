-- KEYS[1]: index, KEYS[2]: exp. ARGV: lower bound ('-', '[prefix' or
-- '(cursor'), upper bound ('+' or '[prefix' followed by byte 255, which no
-- UTF-8 key contains), limit.
-- Returns up to limit + 1 live keys in order (one more tells there are more).
local now = now_ms()
local want = tonumber(ARGV[3]) + 1
local out = {}
local lower = ARGV[1]
while #out < want do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], lower, ARGV[2], 'LIMIT', 0, want)
  if #batch == 0 then break end
  for _, key in ipairs(batch) do
    local at = redis.call('ZSCORE', KEYS[2], key)
    if not at or tonumber(at) > now then
      out[#out + 1] = key
      if #out == want then break end
    end
  end
  lower = '(' .. batch[#batch]
end
return out
