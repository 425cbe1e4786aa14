-- Sliding window counter: the twin of src/algorithm/sliding_window.rs (read its doc for the maths).
-- KEYS: one hash per tier-key with fields s (current window start, ms), c (current count),
--       p (previous count), w (the window length its expiry was set for, ms).
-- sliding_window_check(key, now, limit, window, cost)
--   returns allowed (bool), remaining, retry_after_ms, reset_after_ms, and the state to write.
-- sliding_window_commit(key, state, now, window, cost) consumes cost: within the window the key
--   holds, one HINCRBY of its count; otherwise the whole state. The key expires three
--   windows after the start of the window it counts, so at least two windows after its last write,
--   when its counts can no longer matter: its expiry is set when that window begins (the first
--   write of a window), not on every write, which saves a command per decision; and again by the
--   first check after a reload changed the window's length (w), counted or not, else a window made
--   longer would lose its counts when the shorter one's expiry came.
-- sliding_window_current(key) -> the stored current window's start (ms) and count, 0 and 0 when
--   none: what the behavioural baseline folds in (baseline.lua).
-- Integers stay below 2^53 (the config bounds limit * window, and counts saturate at MAX_COUNT),
-- so double arithmetic is exact.

-- Where stored counts saturate (src/algorithm/mod.rs): above every limit, exact in a double.
local MAX_COUNT = 9007199254740991

-- A window key held (s > 0) whose expiry was set for another length (w) than the tier's window
-- now, after a reload: its length and expiry (ttl, ms from now) follow the window at once, whether
-- or not this request counts, else its counts could go with the old expiry. Returns the length
-- the key's expiry is now set for. (Shared with fixed_window.lua.)
local function window_length_follows(key, s, w, window, ttl)
  if s == 0 or w == window then
    return w
  end
  redis.call('HSET', key, 'w', window)
  redis.call('PEXPIRE', key, ttl)
  return window
end

local function sliding_window_reset(c, elapsed, window)
  if c > 0 then return 2 * window - elapsed end
  return window - elapsed
end

local function sliding_window_check(key, now, limit, window, cost)
  local st = redis.call('HMGET', key, 's', 'c', 'p', 'w')
  local s, c, p = tonumber(st[1]) or 0, tonumber(st[2]) or 0, tonumber(st[3]) or 0
  local start = now - (now % window)
  if s >= start then
    start = s
  elseif s + window == start then
    p, c = c, 0
  else
    p, c = 0, 0
  end
  local elapsed = math.min(math.max(now - start, 0), window)
  local used = p * (window - elapsed) + c * window
  local capacity = limit * window
  local w = window_length_follows(key, s, tonumber(st[4]) or 0, window, start + 3 * window - now)
  -- the window counted, its counts, the window the key held and the length its expiry was set
  -- for (the expiry moves with either)
  local state = { start, c, p, s, w }
  if used + cost * window <= capacity then
    local remaining = math.floor((capacity - used - cost * window) / window)
    return true, remaining, 0, sliding_window_reset(c + cost, elapsed, window), state
  end
  local retry
  if c + cost <= limit then
    retry = window - elapsed - math.floor((limit - c - cost) * window / p)
  elseif cost <= limit then
    retry = (window - elapsed) + (window - math.floor((limit - cost) * window / c))
  else
    retry = 2 * window - elapsed
  end
  local remaining = math.floor(math.max(capacity - used, 0) / window)
  return false, remaining, retry, sliding_window_reset(c, elapsed, window), state
end

local function sliding_window_commit(key, state, now, window, cost)
  local held = state[4] == state[1] and state[5] == window
  if held and state[2] + cost <= MAX_COUNT then
    -- the window the key holds: only its count moves, by Redis's own integer sum (a count Lua
    -- wrote is an integer's text: Redis writes integers up to MAX_COUNT in full)
    redis.call('HINCRBY', key, 'c', string.format('%d', cost))
    return
  end
  redis.call('HSET', key, 's', state[1], 'c', math.min(state[2] + cost, MAX_COUNT), 'p', state[3], 'w', window)
  if not held then
    redis.call('PEXPIRE', key, state[1] + 3 * window - now)
  end
end

local function sliding_window_current(key)
  local st = redis.call('HMGET', key, 's', 'c')
  return tonumber(st[1]) or 0, tonumber(st[2]) or 0
end
