-- The adaptive threat score's store-side factors: the twin of src/algorithm/adaptive.rs (read its
-- doc for the factors and the curve).
-- KEYS: per adaptive tier, an attempts counter and a failures counter, hashes with fields
--       r (the instant, ms, at which the count restarts) and c (the count); the request's
--       reputation keys (IP, user), set by operators with a TTL.
-- adaptive_count(key, now, window, add) -> the count after adding `add` (0 reads only); a count
--       restarts one window after its first unit, and the key expires then (`Count`): the first
--       unit sets both, and every later one in the window is one HINCRBY.
-- adaptive_assess(p, bad_reputation, attempts, counted, failures, configured, limit, cost)
--       -> score (0-100), factor bits (8 reputation, 16 burst, 32 failed logins, on top of the
--       client's), the limit to decide with and the limit a retry would see (`assess`). p holds
--       the check's adaptive numbers (see protocol.lua); attempts include this one when it
--       counted; configured is the tier's limit, which the burst threshold multiplies; limit is
--       the one the score shrinks (raised by a baseline); cost is the request's.

local function adaptive_count(key, now, window, add)
  local st = redis.call('HMGET', key, 'r', 'c')
  local reset, count = tonumber(st[1]), tonumber(st[2]) or 0
  local running = reset ~= nil and now < reset
  if not running then
    reset, count = now + window, 0
  end
  if add > 0 then
    count = count + add
    if running then
      -- the restart and the expiry stand: only the count moves
      redis.call('HINCRBY', key, 'c', string.format('%d', add))
    else
      redis.call('HSET', key, 'r', reset, 'c', count)
      redis.call('PEXPIRE', key, math.max(reset - now, 1))
    end
  end
  return count
end

local function adaptive_score(p, bad_reputation, attempts, failures, configured)
  local score, bits = p.client_score, p.client_bits
  if bad_reputation then
    score, bits = score + p.w_reputation, bits + 8
  end
  if attempts > p.burst_multiple * configured then
    score, bits = score + p.w_burst, bits + 16
  end
  if failures >= p.failed_threshold then
    score, bits = score + p.w_failed, bits + 32
  end
  return math.min(score, 100), bits
end

local function adaptive_limit(limit, score, reduction)
  return math.max(math.floor(limit * (10000 - score * reduction) / 10000), 1)
end

local function adaptive_assess(p, bad_reputation, attempts, counted, failures, configured, limit, cost)
  local score, bits = adaptive_score(p, bad_reputation, attempts, failures, configured)
  -- A retry is one more attempt, which may cross the burst threshold: its wait is measured with
  -- the limit it will see.
  local retry_score = adaptive_score(p, bad_reputation, attempts + (counted and 1 or 0), failures, configured)
  -- Never below the request's own cost, or no wait would let it pass.
  local floor = math.min(cost, limit)
  return score, bits, math.max(adaptive_limit(limit, score, p.reduction), floor),
    math.max(adaptive_limit(limit, retry_score, p.reduction), floor)
end
