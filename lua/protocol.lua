-- The scripts' calling convention, the one Lua place that knows it: the twin of
-- src/store/redis/protocol.rs, which writes the KEYS and ARGV these functions read and reads the
-- reply they write. A field added there is added here at the same position (a unit test there
-- holds the lists below to its lengths). Prepended to decide.lua and report.lua (see
-- src/store/script.rs).
--
-- decide.lua
-- KEYS  per check, in ARGV order: its algorithm's keys (sliding_window: its hash; sliding_log: its
--       sorted set and its running total), then its attempts and failures counters when adaptive,
--       its penalty hash when it has a penalty, its baseline hash when it has one. A check's keys
--       share one hash tag, so they live in one Cluster slot. Last, the request's reputation keys.
-- ARGV  DECIDE_HEADER, then per check CHECK_ARGS, followed by ADAPTIVE_ARGS, PENALTY_ARGS and
--       BASELINE_ARGS for the options it has; all numbers:
--       now: ms, or 0 to read Redis TIME (the normal case: one clock for every replica);
--       commit: 1 to consume when admitted, 0 for a dry run; n: the number of checks;
--       reputation_keys: how many reputation keys end KEYS (0 to 2);
--       algorithm: 1 sliding_window, 2 sliding_log, 3 fixed_window; shadow: 1 = evaluate and report, never deny;
--       quota_mode: 1 = one of the request's quotas, which deny only when all of them are over;
--       counts: 1 = consumes when admitted, 2 = consumes on every request, denied or not, 0 =
--       counts reported failures only; adaptive, penalty, baseline: 1 when the check has that
--       option (a baseline only with sliding_window).
-- Reply admitted (1/0), now (ms), then per check a RECORD; allowed is 1/0, limit the effective
--       limit, bits the threat factors.
--
-- report.lua
-- KEYS  per failure, in ARGV order: its failures counter when adaptive, its penalty hash when it
--       has a penalty; all in one Cluster slot.
-- ARGV  REPORT_HEADER (now as above, n the number of failures), then per failure FAILURE_ARGS,
--       followed by PENALTY_ARGS when it has a penalty.
-- Reply 1

local DECIDE_HEADER = { 'now', 'commit', 'n', 'reputation_keys' }
local CHECK_ARGS = {
  'algorithm', 'limit', 'window', 'cost', 'shadow', 'quota_mode', 'counts', 'adaptive', 'penalty', 'baseline',
}
local ADAPTIVE_ARGS = {
  'client_score', 'client_bits', 'w_reputation', 'w_burst', 'w_failed', 'burst_multiple', 'failed_threshold',
  'reduction',
}
local PENALTY_ARGS = { 'violations', 'period', 'base', 'factor', 'max' }
local BASELINE_ARGS = { 'sensitivity', 'max' }
local RECORD = { 'allowed', 'remaining', 'retry', 'reset', 'limit', 'score', 'bits' }
local REPORT_HEADER = { 'now', 'n' }
local FAILURE_ARGS = { 'window', 'adaptive', 'penalty' }

-- The numbers `names` lists, from ARGV[a + 1] on, by name; and the cursor after them.
local function read_args(a, names)
  local t = {}
  for i, name in ipairs(names) do
    t[name] = tonumber(ARGV[a + i])
  end
  return t, a + #names
end

-- A header with its `now` resolved: 0 means Redis TIME.
local function read_header(names)
  local h, a = read_args(0, names)
  if h.now == 0 then
    local t = redis.call('TIME')
    h.now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return h, a
end

-- One check of decide.lua, from ARGV[a + 1] and KEYS[k] on: its numbers by name, shadow as a
-- boolean, its keys (key, seq_key, attempts_key, failures_key, penalty_key, baseline_key) and its
-- options' numbers as tables (adaptive, penalty, baseline; nil when it has none); then the cursors
-- after it. nil and an error text for an unknown algorithm.
local function read_check(a, k)
  local c
  c, a = read_args(a, CHECK_ARGS)
  c.shadow = c.shadow == 1
  c.quota_mode = c.quota_mode == 1
  c.key = KEYS[k]
  if c.algorithm == 1 or c.algorithm == 3 then
    k = k + 1
  elseif c.algorithm == 2 then
    c.seq_key = KEYS[k + 1]
    k = k + 2
  else
    return nil, 'ERR sluice: unknown algorithm ' .. tostring(c.algorithm)
  end
  if c.adaptive == 1 then
    c.adaptive, a = read_args(a, ADAPTIVE_ARGS)
    c.attempts_key, c.failures_key = KEYS[k], KEYS[k + 1]
    k = k + 2
  else
    c.adaptive = nil
  end
  if c.penalty == 1 then
    c.penalty, a = read_args(a, PENALTY_ARGS)
    c.penalty_key = KEYS[k]
    k = k + 1
  else
    c.penalty = nil
  end
  if c.baseline == 1 then
    c.baseline, a = read_args(a, BASELINE_ARGS)
    c.baseline_key = KEYS[k]
    k = k + 1
  else
    c.baseline = nil
  end
  return c, a, k
end

-- Appends one check's verdict to the reply: the fields RECORD names, a boolean as 1/0.
local function write_record(reply, v)
  for _, name in ipairs(RECORD) do
    local value = v[name]
    if value == true then
      value = 1
    elseif value == false then
      value = 0
    end
    reply[#reply + 1] = value
  end
end

-- One failure of report.lua, from ARGV[a + 1] and KEYS[k] on: its window, its keys
-- (failures_key when adaptive, penalty_key) and its penalty's numbers (nil without one); then the
-- cursors after it.
local function read_failure(a, k)
  local f
  f, a = read_args(a, FAILURE_ARGS)
  if f.adaptive == 1 then
    f.failures_key = KEYS[k]
    k = k + 1
  end
  if f.penalty == 1 then
    f.penalty, a = read_args(a, PENALTY_ARGS)
    f.penalty_key = KEYS[k]
    k = k + 1
  else
    f.penalty = nil
  end
  return f, a, k
end
