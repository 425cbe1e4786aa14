-- Counts one reported failure (e.g. a failed login) on adaptive tier-keys; lua/adaptive.lua is
-- prepended (see src/store/script.rs).
-- KEYS  the failures counters (`<tier-key>:fail`), all in one Cluster slot
-- ARGV  [1] now in ms, or 0 to read Redis TIME; then the window (ms) of each key, in KEYS order
-- Reply the counts after adding

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local counts = {}
for i = 1, #KEYS do
  counts[i] = adaptive_count(KEYS[i], now, tonumber(ARGV[i + 1]), 1)
end
return counts
