-- Fixed window counter: the twin of src/algorithm/fixed_window.rs (read its doc), envoyproxy/ratelimit's
-- own counting.
-- KEYS: one hash per tier-key with fields s (the counted window's start, ms), c (its count) and w
--       (the window length its expiry was set for, ms).
-- fixed_window_check(key, now, limit, window, cost)
--   returns allowed (bool), remaining, retry_after_ms, reset_after_ms, and the state to write.
-- fixed_window_commit(key, state, now, window, cost) consumes cost; the key expires when its
--   window ends, when its count can no longer matter (set by the window's first write: the end
--   does not move; and again by the first check after a reload changed the window's length, w,
--   counted or not).

local function fixed_window_check(key, now, limit, window, cost)
  local st = redis.call('HMGET', key, 's', 'c', 'w')
  local s, c = tonumber(st[1]) or 0, tonumber(st[2]) or 0
  local start = now - (now % window)
  if s >= start then
    start = s
  else
    c = 0
  end
  local after = math.min(c + cost, MAX_COUNT)
  -- until the window ends: at least 1 ms, since now lies inside it
  local reset = math.max(start + window - now, 1)
  local w = window_length_follows(key, s, tonumber(st[3]) or 0, window, reset)
  -- the window counted, its count, the window the key held and the length its expiry was set for
  local state = { start, c, s, w }
  if after <= limit then
    return true, limit - after, 0, reset, state
  end
  return false, math.max(limit - c, 0), reset, reset, state
end

local function fixed_window_commit(key, state, now, window, cost)
  local held = state[3] == state[1] and state[4] == window
  if held and state[2] + cost <= MAX_COUNT then
    -- the window the key holds: only its count moves (see sliding_window_commit)
    redis.call('HINCRBY', key, 'c', string.format('%d', cost))
    return
  end
  redis.call('HSET', key, 's', state[1], 'c', math.min(state[2] + cost, MAX_COUNT), 'w', window)
  if not held then
    redis.call('PEXPIRE', key, math.max(state[1] + window - now, 1))
  end
end
