-- decide(): one call decides a batch of requests, in order, each against every tier that applies
-- to it and each exactly as if it had been sent alone. It calls the
-- algorithm files of lua/ and protocol.lua, which come before it in the library (see
-- src/store/script.rs), and library.lua registers it.
-- KEYS, ARGV and reply: see protocol.lua, whose read_check and write_record are the one place that
-- knows their layout.
--
-- The limit applied is the base limit, raised by the baseline, then shrunk by the threat score.
-- All or nothing: the request is admitted only when every enforcing tier allows it (quota-mode
-- checks: when one of them does; see algorithm::admits), and only then
-- does any tier consume (a shadow tier only what it would have allowed). A denied request changes
-- no count, except an adaptive tier's attempts counter, which counts every attempt that is not a
-- dry run, a penalty's violations, which count each denial by their own tier, and a tier that
-- counts everything, which writes as soon as it is decided (a repeat of its key in the same
-- request sees it, and is decided against its own limit, as envoyproxy/ratelimit counts). A blocked
-- tier-key is denied until its block ends. A tier whose cost is 0 only looks: it changes no count,
-- attempt or violation.

-- A request's checks and verdicts by position, reused by every request of a call and the calls
-- after it: a request is read, decided and written before the next one begins, and every field is
-- set anew (read_check, new_verdict), so nothing of one request reaches another. Fresh tables for
-- each cost Redis about a fifth of the function's time (docs/performance.md).
local CHECKS, VERDICTS = {}, {}

-- The reused table at position i of `pool`.
local function reused(pool, i)
  local t = pool[i]
  if not t then
    t = {}
    pool[i] = t
  end
  return t
end

-- Check i's verdict before it is decided: nothing allowed, nothing known.
local function new_verdict(i, c)
  local v = reused(VERDICTS, i)
  v.check, v.score, v.bits, v.allowed, v.remaining, v.retry, v.reset, v.limit, v.state =
    c, 0, 0, false, 0, 0, 0, 0, false
  v.penalty_state, v.baseline, v.baseline_w, v.baseline_moved, v.retry_limit, v.blocked, v.written =
    nil, nil, nil, nil, nil, nil, nil
  return v
end

-- Whether one of the request's reputation keys (KEYS[first] on, `count` of them) marks it.
local function bad_reputation(first, count)
  for k = first, first + count - 1 do
    if redis.call('EXISTS', KEYS[k]) == 1 then
      return true
    end
  end
  return false
end

-- One check's algorithm at `limit`: allowed, remaining, retry, reset and the state to write.
local function algorithm_check(c, now, limit)
  if c.algorithm == 1 then
    return sliding_window_check(c.key, now, limit, c.window, c.cost)
  elseif c.algorithm == 3 then
    return fixed_window_check(c.key, now, limit, c.window, c.cost)
  end
  return sliding_log_check(c.key, now, limit, c.window, c.cost)
end

-- Writes what one check consumes.
local function write(c, v, now)
  v.written = true
  if c.algorithm == 1 then
    sliding_window_commit(c.key, v.state, now, c.window, c.cost)
  elseif c.algorithm == 3 then
    fixed_window_commit(c.key, v.state, now, c.window, c.cost)
  else
    sliding_log_commit(c.key, c.seq_key, now, c.window, c.cost)
  end
  if c.baseline and c.algorithm ~= 2 and v.baseline_moved then
    baseline_commit(c.baseline_key, v.baseline, v.baseline_w, now, c.window)
  end
end

-- Decides the request whose packed numbers are `s` and whose keys begin at KEYS[k], at `now`;
-- appends its reply to `reply`. Answers the key cursor after it, or nil and an error text.
local function decide_one(now, s, k, reply)
  local commit, n, reputation_keys, pos = read_header(s)
  commit = commit == 1
  local reputation_first = k
  k = k + reputation_keys

  -- read once, by the first adaptive check
  local reputation = nil

  local admitted = true
  -- quota-mode checks: how many, and whether one of them is within its quota (a shadow one always is)
  local quotas, quota_within = 0, false
  for i = 1, n do
    local c, next_pos, next_k = read_check(s, pos, k, reused(CHECKS, i))
    if not c then
      return nil, next_pos
    end
    pos, k = next_pos, next_k
    local window, cost = c.window, c.cost
    local v = new_verdict(i, c)
    if c.penalty then
      v.penalty_state = penalty_read(c.penalty_key, now, c.penalty)
    end
    local effective = c.limit
    if c.baseline then
      local s, count = sliding_window_current(c.key)
      v.baseline, v.baseline_w, v.baseline_moved = baseline_load(c.baseline_key, s, count, now, window)
      effective = baseline_limit(c.limit, v.baseline, c.baseline.sensitivity, c.baseline.max)
    end
    -- A look (cost 0) changes nothing: no attempt, no violation, no count.
    local counted = commit and cost > 0
    if c.adaptive then
      local attempts = adaptive_count(c.attempts_key, now, window, counted and 1 or 0)
      local failures = adaptive_count(c.failures_key, now, window, 0)
      if reputation == nil then
        reputation = bad_reputation(reputation_first, reputation_keys)
      end
      v.score, v.bits, effective, v.retry_limit =
        adaptive_assess(c.adaptive, reputation, attempts, counted, failures, c.limit, effective, cost)
    end
    v.limit = effective
    v.allowed, v.remaining, v.retry, v.reset, v.state = algorithm_check(c, now, effective)
    if v.retry_limit and not v.allowed and v.retry_limit < effective then
      local _
      _, _, v.retry = algorithm_check(c, now, v.retry_limit)
    end
    if c.penalty then
      if not v.allowed and counted and v.penalty_state.u <= now then
        penalty_violate(c.penalty_key, v.penalty_state, now, c.penalty, 1)
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
    if commit and c.counts == 2 and cost > 0 and not v.blocked then
      -- counts every request, denied or not (envoyproxy/ratelimit's way), unless its key is
      -- blocked: written now, so a repeat of its key later in this request sees it
      write(c, v, now)
    end
    if c.quota_mode then
      quotas = quotas + 1
      quota_within = quota_within or v.allowed or c.shadow
    elseif not v.allowed and not c.shadow then
      admitted = false
    end
  end

  if quotas > 0 and not quota_within then
    admitted = false
  end

  if commit then
    for i = 1, n do
      local v = VERDICTS[i]
      local c = v.check
      -- counts admitted requests; a shadow tier only what it would have allowed (past its limit
      -- the count would only grow its state); a failure-only tier (0) never here
      if not v.written and c.counts == 1 and c.cost > 0 and admitted and v.allowed then
        write(c, v, now)
      elseif v.written and not admitted and (c.algorithm == 1 or c.algorithm == 3) then
        -- its own denied units count: the wait runs from the state they leave, as a retry finds
        -- it (see Verdict::after_counting)
        local _, remaining, retry, reset = algorithm_check(c, now, v.limit)
        v.retry = retry
        if not v.allowed then
          v.remaining, v.reset = remaining, reset
        end
      end
    end
  end

  write_reply_header(reply, admitted, now)
  for i = 1, n do
    write_record(reply, VERDICTS[i])
  end
  return k
end

-- Decides a plain request (read_plain: one check of either window algorithm, no options) whose
-- key is KEYS[k], as decide_one would, without the check and verdict tables, which cost it about
-- 2 µs a request (docs/performance.md); appends its reply. Answers the key cursor after it, or nil
-- when the request is not plain.
local function decide_plain(now, s, k, reply)
  local commit, algorithm, limit, window, cost, shadow, counts = read_plain(s)
  local check, consume
  if algorithm == 1 then
    check, consume = sliding_window_check, sliding_window_commit
  elseif algorithm == 3 then
    check, consume = fixed_window_check, fixed_window_commit
  else
    return nil
  end
  local key = KEYS[k]
  local allowed, remaining, retry, reset, state = check(key, now, limit, window, cost)
  -- one check: a quota is within when it allows, as any check is; a shadow one always admits
  local admitted = allowed or shadow == 1
  if commit == 1 and cost > 0 and (counts == 2 or (counts == 1 and allowed)) then
    consume(key, state, now, window, cost)
    if not admitted then
      -- counted though denied (counts 2): the wait runs from the state its units leave
      local _
      _, remaining, retry, reset = check(key, now, limit, window, cost)
    end
  end
  write_plain_reply(reply, admitted, now, allowed, remaining, retry, reset, limit)
  return k + 1
end

-- The function Redis calls: every request of the batch in order, one clock for all of them.
local function decide()
  local now, requests = read_batch_header()
  local k = 1
  local reply = {}
  for r = 1, requests do
    local s = request_numbers(r)
    local next_k, err = decide_plain(now, s, k, reply)
    if not next_k then
      next_k, err = decide_one(now, s, k, reply)
    end
    if not next_k then
      return redis.error_reply(err)
    end
    k = next_k
  end
  return table.concat(reply)
end
