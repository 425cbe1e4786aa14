-- Counts one reported failure (e.g. a failed login) on tier-keys; lua/adaptive.lua and
-- lua/penalty.lua are prepended (see src/store/script.rs).
-- KEYS  per tier-key, in ARGV order: its failures counter (`<tier-key>:fail`) when adaptive, its
--       penalty hash (`<tier-key>:pen`) when it has a penalty; all in one Cluster slot
-- ARGV  [1] now in ms, or 0 to read Redis TIME; [2] the number of tier-keys; then per tier-key:
--       window_ms, adaptive (0/1), penalty (0/1) and, with a penalty, violations, period_ms,
--       base_ms, factor, max_ms
-- Reply 1

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local k, a = 1, 2
for _ = 1, tonumber(ARGV[2]) do
  local window, adaptive, penalty = tonumber(ARGV[a + 1]), ARGV[a + 2] == '1', ARGV[a + 3] == '1'
  a = a + 3
  if adaptive then
    adaptive_count(KEYS[k], now, window, 1)
    k = k + 1
  end
  if penalty then
    local p = {
      violations = tonumber(ARGV[a + 1]), period = tonumber(ARGV[a + 2]), base = tonumber(ARGV[a + 3]),
      factor = tonumber(ARGV[a + 4]), max = tonumber(ARGV[a + 5]),
    }
    a = a + 5
    local st = penalty_read(KEYS[k], now, p)
    -- A failure while blocked adds nothing: the block already stands.
    if st.u <= now then
      penalty_violate(KEYS[k], st, now, p, 1)
    end
    k = k + 1
  end
end
return 1
