-- The entry script: one call decides one request against every tier that applies to it.
-- The algorithm files in lua/ are prepended to this one (see src/store/script.rs).
--
-- KEYS  per tier in ARGV order: sliding_window -> 1 key (hash); sliding_log -> 2 keys (zset, seq);
--       an adaptive tier adds its attempts and failures counters (see adaptive.lua), a tier with a
--       penalty its penalty hash (see penalty.lua), a tier with a baseline its average (see
--       baseline.lua). The limit applied is the base limit, raised by the baseline, then shrunk
--       by the threat score. Each tier's
--       keys share one hash tag, so a tier-key lives in one Cluster slot. Last, the request's
--       reputation keys (ARGV[4] of them).
-- ARGV  [1] now in ms, or 0 to read Redis TIME (the normal case: one clock for every replica)
--       [2] 1 to consume when admitted, 0 for a dry run
--       [3] n, the number of tiers
--       [4] the number of reputation keys at the end of KEYS (0 to 2)
--       then per tier: algorithm (1 sliding_window, 2 sliding_log), limit, window_ms, cost,
--       shadow (1 = evaluate and report, never deny), counts (1 = consumes when admitted, 2 =
--       consumes on every request, denied or not, 0 = counts reported failures only), adaptive (0/1), penalty (0/1), baseline (0/1);
--       an adaptive
--       tier adds client_score, client_bits, w_reputation, w_burst, w_failed, burst_multiple,
--       failed_threshold, reduction_percent; a penalty adds violations, period_ms, base_ms, factor,
--       max_ms; a baseline (sliding_window only) adds sensitivity_percent, max_percent
-- Reply {admitted (1/0), now_ms, then per tier: allowed (1/0), remaining, retry_after_ms,
--       reset_after_ms, effective limit, score, factor bits}
--
-- All or nothing: the request is admitted only when every enforcing tier allows it, and only then
-- does any tier consume (a shadow tier only what it would have allowed). A denied request changes
-- no count, except an adaptive tier's attempts
-- counter, which counts every attempt that is not a dry run, and a penalty's violations, which
-- count each denial by their own tier. A blocked tier-key is denied until its block ends. A tier
-- whose cost is 0 only looks: it changes no count, attempt or violation.

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local commit = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local reputation_keys = tonumber(ARGV[4])

local bad_reputation = nil
local function reputation()
  if bad_reputation == nil then
    bad_reputation = false
    for k = #KEYS - reputation_keys + 1, #KEYS do
      if redis.call('EXISTS', KEYS[k]) == 1 then
        bad_reputation = true
      end
    end
  end
  return bad_reputation
end

local admitted = true
local verdicts = {}
local next_key = 1
local a = 4
for i = 1, n do
  local algorithm = tonumber(ARGV[a + 1])
  local limit, window, cost = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local shadow = ARGV[a + 5] == '1'
  local counts = tonumber(ARGV[a + 6])
  local adaptive, penalty, baseline = ARGV[a + 7] == '1', ARGV[a + 8] == '1', ARGV[a + 9] == '1'
  a = a + 9
  local v = { algorithm = algorithm, window = window, cost = cost, key = KEYS[next_key], score = 0, bits = 0, counts = counts }
  if algorithm == 1 then
    next_key = next_key + 1
  elseif algorithm == 2 then
    v.seq_key = KEYS[next_key + 1]
    next_key = next_key + 2
  else
    return redis.error_reply('ERR sluice: unknown algorithm ' .. tostring(algorithm))
  end
  local p, client_score, client_bits, reduction
  if adaptive then
    p = {
      w_reputation = tonumber(ARGV[a + 3]), w_burst = tonumber(ARGV[a + 4]), w_failed = tonumber(ARGV[a + 5]),
      burst_multiple = tonumber(ARGV[a + 6]), failed_threshold = tonumber(ARGV[a + 7]),
    }
    client_score, client_bits, reduction = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 8])
    a = a + 8
    v.attempts_key, v.failures_key = KEYS[next_key], KEYS[next_key + 1]
    next_key = next_key + 2
  end
  if penalty then
    v.penalty = {
      violations = tonumber(ARGV[a + 1]), period = tonumber(ARGV[a + 2]), base = tonumber(ARGV[a + 3]),
      factor = tonumber(ARGV[a + 4]), max = tonumber(ARGV[a + 5]),
    }
    a = a + 5
    v.penalty_key = KEYS[next_key]
    next_key = next_key + 1
    v.penalty_state = penalty_read(v.penalty_key, now, v.penalty)
  end
  local effective = limit
  if baseline then
    local sensitivity, max = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    a = a + 2
    v.baseline_key = KEYS[next_key]
    next_key = next_key + 1
    local sw = redis.call('HMGET', v.key, 's', 'c')
    local base = redis.call('HMGET', v.baseline_key, 'a', 'w')
    v.baseline, v.baseline_w = baseline_fold(tonumber(base[1]) or 0, tonumber(base[2]) or 0,
      tonumber(sw[1]) or 0, tonumber(sw[2]) or 0, now - (now % window), window)
    effective = baseline_limit(limit, v.baseline, sensitivity, max)
  end
  -- A look (cost 0) changes nothing: no attempt, no violation, no count.
  local counted = commit and cost > 0
  if adaptive then
    local attempts = adaptive_count(v.attempts_key, now, window, counted and 1 or 0)
    local failures = adaptive_count(v.failures_key, now, window, 0)
    v.score, v.bits = adaptive_score(client_score, client_bits, reputation(), attempts, failures, limit, p)
    -- never below the request's own cost, or no wait would let it pass; a retry is one more
    -- attempt, which may cross the burst threshold, so its wait is measured with the limit it sees
    local retry_score = adaptive_score(client_score, client_bits, reputation(),
      attempts + (counted and 1 or 0), failures, limit, p)
    v.retry_limit = math.max(adaptive_limit(effective, retry_score, reduction), math.min(cost, effective))
    effective = math.max(adaptive_limit(effective, v.score, reduction), math.min(cost, effective))
  end
  v.limit = effective
  if algorithm == 1 then
    v.allowed, v.remaining, v.retry, v.reset, v.state = sliding_window_check(v.key, now, effective, window, cost)
  else
    v.allowed, v.remaining, v.retry, v.reset = sliding_log_check(v.key, now, effective, window, cost)
  end
  if v.retry_limit and not v.allowed and v.retry_limit < effective then
    local _, retry
    if algorithm == 1 then
      _, _, retry = sliding_window_check(v.key, now, v.retry_limit, window, cost)
    else
      _, _, retry = sliding_log_check(v.key, now, v.retry_limit, window, cost)
    end
    v.retry = retry
  end
  if penalty then
    if not v.allowed and counted and v.penalty_state.u <= now then
      penalty_violate(v.penalty_key, v.penalty_state, now, v.penalty, 1)
    end
    local wait = v.penalty_state.u - now
    if wait > 0 then
      -- blocked: retry-after is the longest wait, the block's or the window's when longer; a
      -- blocked key counts nothing
      local window_wait = v.allowed and 0 or v.retry
      v.allowed, v.remaining = false, 0
      v.retry, v.reset = math.max(wait, window_wait), math.max(wait, v.reset)
      v.state, v.blocked = nil, true
    end
  end
  if not v.allowed and not shadow then
    admitted = false
  end
  verdicts[i] = v
end

if commit then
  for i = 1, n do
    local v = verdicts[i]
    local consume
    if v.cost == 0 then
      -- a look only
      consume = false
    elseif v.counts == 2 then
      -- counts every request, denied or not (envoyproxy/ratelimit's way), unless its key is blocked
      consume = not v.blocked
    else
      -- counts admitted requests; a shadow tier only what it would have allowed (past its limit
      -- the count would only grow its state); a failure-only tier (0) never here
      consume = admitted and v.counts == 1 and v.allowed
    end
    if not consume then
      -- nothing to write
    elseif v.algorithm == 1 then
      sliding_window_commit(v.key, v.state, v.window, v.cost)
      if not admitted then
        -- its own denied units count now: the wait runs from the state they leave (see
        -- Verdict::after_counting)
        local _, remaining, retry, reset = sliding_window_check(v.key, now, v.limit, v.window, v.cost)
        v.retry = retry
        if not v.allowed then
          v.remaining, v.reset = remaining, reset
        end
      end
      if v.baseline_key then
        redis.call('HSET', v.baseline_key, 'a', v.baseline, 'w', v.baseline_w)
        redis.call('PEXPIRE', v.baseline_key, 64 * v.window)
      end
    else
      sliding_log_commit(v.key, v.seq_key, now, v.window, v.cost)
    end
  end
end

local reply = { admitted and 1 or 0, now }
for i = 1, n do
  local v = verdicts[i]
  reply[#reply + 1] = v.allowed and 1 or 0
  reply[#reply + 1] = v.remaining
  reply[#reply + 1] = v.retry
  reply[#reply + 1] = v.reset
  reply[#reply + 1] = v.limit
  reply[#reply + 1] = v.score
  reply[#reply + 1] = v.bits
end
return reply
