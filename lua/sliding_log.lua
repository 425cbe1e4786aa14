-- Sliding log: the twin of src/algorithm/sliding_log.rs (read its doc for the maths).
-- KEYS: a sorted set of one member per unit consumed, scored by its instant (ms), and a sequence
--       counter that keeps members unique even when a clock steps back.
-- sliding_log_check(key, now, limit, window, cost)
--   drops entries that left the window, then returns allowed (bool), remaining, retry_after_ms,
--   reset_after_ms.
-- sliding_log_commit(key, seq_key, now, window, cost) adds cost entries at now; both keys expire
--   one window after the last write.

local function sliding_log_check(key, now, limit, window, cost)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count + cost <= limit then
    return true, limit - count - cost, 0, window
  end
  local k = count + cost - limit
  local retry = window
  if k <= count then
    local entry = redis.call('ZRANGE', key, k - 1, k - 1, 'WITHSCORES')
    retry = math.max(tonumber(entry[2]) + window - now, 0)
  end
  local reset = 0
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then
    reset = math.max(tonumber(newest[2]) + window - now, 0)
  end
  return false, math.max(limit - count, 0), retry, reset
end

local function sliding_log_commit(key, seq_key, now, window, cost)
  local last = redis.call('INCRBY', seq_key, cost)
  for j = last - cost + 1, last do
    redis.call('ZADD', key, now, j)
  end
  redis.call('PEXPIRE', key, window)
  redis.call('PEXPIRE', seq_key, window)
end
