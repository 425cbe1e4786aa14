-- Behavioural baseline: the twin of src/algorithm/baseline.rs (read its doc for the maths).
-- KEYS: one hash per tier-key (`<tier-key>:base`) with field a, the moving average of units per
--       window in thousandths; it expires with the sliding window it follows.
-- baseline_fold(a, s, c, start, window) -> the average once the window that started at s with c
--       units, and the empty windows after it, are folded in, up to the window starting at start.
-- baseline_limit(base, a, sensitivity, max) -> the limit the key may use.

local function baseline_fold(a, s, c, start, window)
  if (s == 0 and c == 0) or s >= start then
    return a
  end
  a = a - math.floor(a / 8) + c * 125
  local empty = (start - s) / window - 1
  if empty > 64 then
    return 0
  end
  for _ = 1, empty do
    a = a - math.floor(a / 8)
  end
  return a
end

local function baseline_limit(base, a, sensitivity, max)
  local raised = math.floor(math.floor(a / 1000) * sensitivity / 100)
  local cap = math.floor(base * max / 100)
  return math.max(base, math.min(raised, cap))
end
