-- Behavioural baseline: the twin of src/algorithm/baseline.rs (read its doc for the maths).
-- KEYS: one hash per tier-key (`<tier-key>:base`) with fields a, the moving average of units per
--       window in thousandths, w, the start of the first window not folded in yet, and d, the
--       window's length they were stored with; it expires KEPT_WINDOWS + 1 windows after w, so at
--       least KEPT_WINDOWS after its last write, when baseline_fold forgets the average anyway.
-- baseline_fold(a, w, s, c, start, window) -> a, w: every window from w up to the one starting at
--       start folded in, with c units for the window starting at s (the sliding window's) and 0
--       for the others.
-- baseline_limit(base, a, sensitivity, max) -> the limit the key may use.
-- baseline_load(key, s, c, now, window) -> a, w, moved: the stored average folded up to the window
--       of now, and whether the key must be stored again: when that changed a or w, or the tier's
--       window is not the one the key's expiry was set with (a reload changed it). False once the
--       window's first write has stored it: a and w stay the same until the next window.
-- baseline_commit(key, a, w, now, window) stores them, with the key's expiry.

-- Windows an average is kept without traffic (KEPT_WINDOWS in src/algorithm/baseline.rs): the
-- key's TTL, and the silence after which the average is forgotten.
local BASELINE_KEPT_WINDOWS = 64

-- A window's units are taken at most this many (src/algorithm/baseline.rs), so the average stays
-- exact in a double.
local BASELINE_MAX_UNITS = 9007199254740

local function baseline_fold(a, w, s, c, start, window)
  local from = w
  if from == 0 then
    from = (s > 0) and s or start
  end
  if from >= start then
    return a, from
  end
  local windows = (start - from) / window
  if windows > BASELINE_KEPT_WINDOWS then
    return 0, start
  end
  for i = 0, windows - 1 do
    local units = 0
    if from + i * window == s then
      units = math.min(c, BASELINE_MAX_UNITS)
    end
    a = a - math.floor(a / 8) + units * 125
  end
  return a, start
end

local function baseline_limit(base, a, sensitivity, max)
  local raised = math.floor(math.floor(a / 1000) * sensitivity / 100)
  local cap = math.floor(base * max / 100)
  return math.max(base, math.min(raised, cap))
end

local function baseline_load(key, s, c, now, window)
  local st = redis.call('HMGET', key, 'a', 'w', 'd')
  local stored_a, stored_w = tonumber(st[1]), tonumber(st[2])
  local a, w = baseline_fold(stored_a or 0, stored_w or 0, s, c, now - (now % window), window)
  return a, w, a ~= stored_a or w ~= stored_w or tonumber(st[3]) ~= window
end

local function baseline_commit(key, a, w, now, window)
  redis.call('HSET', key, 'a', a, 'w', w, 'd', window)
  redis.call('PEXPIRE', key, w + (BASELINE_KEPT_WINDOWS + 1) * window - now)
end
