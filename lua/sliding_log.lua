-- Sliding log: the twin of src/algorithm/sliding_log.rs (read its doc for the maths).
-- KEYS: a sorted set of one member per request consumed, scored by its instant (ms), and the key's
--       running total of units consumed. A member '<start>:<end>' says the request held units
--       start+1 .. end of that total; start is zero-padded to 16 digits so that the members of one
--       instant sort in the order they were added. (A bare number j, as older versions wrote, is
--       the one unit j.) The work per request never grows with its cost.
-- sliding_log_check(key, now, limit, window, cost)
--   drops entries that left the window, then returns allowed (bool), remaining, retry_after_ms,
--   reset_after_ms.
-- sliding_log_commit(key, seq_key, now, window, cost) adds one entry for cost units at now; both
--   keys expire one window after the last write.

local function sliding_log_span(member)
  local s, e = string.match(member, '^(%d+):(%d+)$')
  if s then
    return tonumber(s), tonumber(e)
  end
  local j = tonumber(member)
  return j - 1, j
end

local function sliding_log_check(key, now, limit, window, cost)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local oldest = redis.call('ZRANGE', key, 0, 0)
  if not oldest[1] then
    if cost <= limit then
      return true, limit - cost, 0, window
    end
    return false, limit, window, window
  end
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local base = sliding_log_span(oldest[1])
  local _, total = sliding_log_span(newest[1])
  local count = total - base
  local reset = math.max(tonumber(newest[2]) + window - now, 0)
  if count + cost <= limit then
    return true, limit - count - cost, 0, cost > 0 and window or reset
  end
  local retry = window
  if cost <= limit then
    -- The entry holding unit base + k, with k = count + cost - limit units that must leave first:
    -- the ends ascend with the members' order, so a binary search over ranks finds it.
    local target = base + count + cost - limit
    local lo, hi = 0, redis.call('ZCARD', key) - 1
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local _, e = sliding_log_span(redis.call('ZRANGE', key, mid, mid)[1])
      if e < target then
        lo = mid + 1
      else
        hi = mid
      end
    end
    local entry = redis.call('ZRANGE', key, lo, lo, 'WITHSCORES')
    retry = math.max(tonumber(entry[2]) + window - now, 0)
  end
  return false, math.max(limit - count, 0), retry, reset
end

local function sliding_log_commit(key, seq_key, now, window, cost)
  local start = tonumber(redis.call('GET', seq_key)) or 0
  local last = math.min(start + cost, MAX_COUNT)
  redis.call('SET', seq_key, string.format('%d', last), 'PX', window)
  redis.call('ZADD', key, now, string.format('%016d:%d', start, last))
  redis.call('PEXPIRE', key, window)
end
