-- The library's calling convention, the one Lua place that knows it: the twin of
-- src/store/redis/protocol.rs, which writes the KEYS and ARGV these functions read and reads the
-- reply they write. A field added there is added here at the same position (a unit test there
-- holds the counts below to its own). decide.lua and report.lua come after it in the library
-- (see src/store/script.rs).
--
-- decide.lua: one call decides a batch of requests, in order, each as if it had been sent alone.
-- KEYS  per request: its reputation keys (0 to 2), then per check, in ARGV order, its algorithm's
--       keys (sliding_window, fixed_window: its hash; sliding_log: its sorted set and its running
--       total), then its attempts and failures counters when adaptive, its penalty hash when it has
--       a penalty, its baseline hash when it has one. A check's keys share one hash tag, so they
--       live in one Cluster slot.
-- ARGV  BATCH_HEADER (two decimal numbers), then one argument per request holding its numbers
--       packed as unsigned 64-bit little-endian integers (struct's 'I8', one unpack per part
--       instead of one decimal text to parse per number): DECIDE_HEADER, then per check
--       CHECK_ARGS, followed by ADAPTIVE_ARGS, PENALTY_ARGS and BASELINE_ARGS for the options it
--       has:
--       now: ms, or 0 to read Redis TIME (the normal case: one clock for every replica);
--       requests: how many requests follow;
--       commit: 1 to consume when admitted, 0 for a dry run; n: the number of checks;
--       reputation_keys: how many reputation keys begin the request's KEYS (0 to 2);
--       algorithm: 1 sliding_window, 2 sliding_log, 3 fixed_window; shadow: 1 = evaluate and report, never deny;
--       quota_mode: 1 = one of the request's quotas, which deny only when all of them are over;
--       counts: 1 = consumes when admitted, 2 = consumes on every request, denied or not, 0 =
--       counts reported failures only; adaptive, penalty, baseline: 1 when the check has that
--       option (a baseline only with sliding_window).
-- Reply one string: per request REPLY_HEADER, admitted (1/0) and now (ms), then per check a
--       RECORD; all signed 64-bit little-endian integers ('i8'); allowed is 1/0, limit the
--       effective limit, bits the threat factors.
--
-- report.lua
-- KEYS  per failure, in ARGV order: its failures counter when adaptive, its penalty hash when it
--       has a penalty; all in one Cluster slot.
-- ARGV  REPORT_HEADER (now as above, n the number of failures), then per failure FAILURE_ARGS,
--       followed by PENALTY_ARGS when it has a penalty.
-- Reply 1

-- How many numbers each part holds, and their order (protocol.rs has the same counts, and a unit
-- test there holds them equal). The readers below build each part with one table constructor, in
-- this order: no cursor arithmetic outside them, and no table that grows field by field.
local BATCH_HEADER = 2 -- now, requests
local DECIDE_HEADER = 3 -- commit, n, reputation_keys
local CHECK_ARGS = 10 -- algorithm, limit, window, cost, shadow, quota_mode, counts, adaptive, penalty, baseline
local ADAPTIVE_ARGS = 8 -- client_score, client_bits, w_reputation, w_burst, w_failed, burst_multiple,
                        -- failed_threshold, reduction
local PENALTY_ARGS = 5 -- violations, period, base, factor, max
local BASELINE_ARGS = 2 -- sensitivity, max
local REPLY_HEADER = 2 -- admitted, now
local RECORD = 7 -- allowed, remaining, retry, reset, limit, score, bits
local REPORT_HEADER = 2 -- now, n
local FAILURE_ARGS = 3 -- window, adaptive, penalty

-- The keys and arguments of the call under way: library.lua's entry points set them before they
-- run decide or report (a function's callback gets them as parameters, not as globals).
local KEYS, ARGV = {}, {}

-- ARGV[1] as the clock: 0 means Redis TIME.
local function read_now()
  local now = tonumber(ARGV[1])
  if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end

-- struct formats of decide.lua's packed parts: one 'I8' (or 'i8') per number (written out, since
-- a library cannot call string functions while it loads; protocol.rs's test counts them).
local DECIDE_FORMAT = '<I8I8I8'
local CHECK_FORMAT = '<I8I8I8I8I8I8I8I8I8I8'
local ADAPTIVE_FORMAT = '<I8I8I8I8I8I8I8I8'
local PENALTY_FORMAT = '<I8I8I8I8I8'
local BASELINE_FORMAT = '<I8I8'
local REPLY_FORMAT = '<i8i8'
local RECORD_FORMAT = '<i8i8i8i8i8i8i8'
-- A plain request (see read_plain): DECIDE_FORMAT and one CHECK_FORMAT; its reply, REPLY_FORMAT and
-- one RECORD_FORMAT.
local PLAIN_FORMAT = '<I8I8I8I8I8I8I8I8I8I8I8I8I8'
local PLAIN_REPLY_FORMAT = '<i8i8i8i8i8i8i8i8i8'
-- A plain request's packed numbers are exactly this long: no option adds to them.
local PLAIN_BYTES = 8 * (DECIDE_HEADER + CHECK_ARGS)

-- decide.lua's batch header: now, and the number of requests.
local function read_batch_header()
  return read_now(), tonumber(ARGV[2])
end

-- Request r's packed numbers in decide.lua's batch.
local function request_numbers(r)
  return ARGV[BATCH_HEADER + r]
end

-- One request's header from its packed numbers `s`: commit, n, reputation_keys, and the position
-- after it.
local function read_header(s)
  return struct.unpack(DECIDE_FORMAT, s)
end

-- A request of one check and no options from its packed numbers `s`, or nil when it is not one (a
-- request of several checks, or with options, is longer). Answers commit (1/0), algorithm,
-- limit, window, cost, shadow (1/0) and counts, as read_header and read_check name them.
local function read_plain(s)
  if #s ~= PLAIN_BYTES then
    return nil
  end
  local commit, n, reputation_keys, algorithm, limit, window, cost, shadow, _, counts, adaptive, penalty, baseline =
    struct.unpack(PLAIN_FORMAT, s)
  if n ~= 1 or reputation_keys ~= 0 or adaptive ~= 0 or penalty ~= 0 or baseline ~= 0 then
    return nil
  end
  return commit, algorithm, limit, window, cost, shadow, counts
end

-- report.lua's header, and the cursor after it.
local function read_report_header()
  return { now = read_now(), n = tonumber(ARGV[2]) }, REPORT_HEADER
end

local function read_penalty(a)
  return {
    violations = tonumber(ARGV[a + 1]), period = tonumber(ARGV[a + 2]), base = tonumber(ARGV[a + 3]),
    factor = tonumber(ARGV[a + 4]), max = tonumber(ARGV[a + 5]),
  }, a + PENALTY_ARGS
end

-- One check of decide.lua, from position `pos` of its request's packed numbers `s` and from
-- KEYS[k] on, read into the table `c` (every field set anew): its numbers by name, shadow and
-- quota_mode as booleans, its keys (key, seq_key, attempts_key, failures_key, penalty_key,
-- baseline_key) and its options' numbers as tables (adaptive, penalty, baseline; false when it has
-- none); then the positions after it. nil and an error text for an unknown algorithm.
local function read_check(s, pos, k, c)
  local algorithm, limit, window, cost, shadow, quota_mode, counts, adaptive, penalty, baseline
  algorithm, limit, window, cost, shadow, quota_mode, counts, adaptive, penalty, baseline, pos =
    struct.unpack(CHECK_FORMAT, s, pos)
  c.algorithm, c.limit, c.window, c.cost, c.counts = algorithm, limit, window, cost, counts
  c.shadow, c.quota_mode = shadow == 1, quota_mode == 1
  c.adaptive, c.penalty, c.baseline = adaptive == 1, penalty == 1, baseline == 1
  c.key, c.seq_key, c.attempts_key, c.failures_key, c.penalty_key, c.baseline_key =
    KEYS[k], false, false, false, false, false
  if algorithm == 1 or algorithm == 3 then
    k = k + 1
  elseif algorithm == 2 then
    c.seq_key = KEYS[k + 1]
    k = k + 2
  else
    return nil, 'ERR sluice: unknown algorithm ' .. tostring(algorithm)
  end
  if c.adaptive then
    local a = {}
    a.client_score, a.client_bits, a.w_reputation, a.w_burst, a.w_failed, a.burst_multiple,
      a.failed_threshold, a.reduction, pos = struct.unpack(ADAPTIVE_FORMAT, s, pos)
    c.adaptive = a
    c.attempts_key, c.failures_key = KEYS[k], KEYS[k + 1]
    k = k + 2
  end
  if c.penalty then
    local p = {}
    p.violations, p.period, p.base, p.factor, p.max, pos = struct.unpack(PENALTY_FORMAT, s, pos)
    c.penalty = p
    c.penalty_key = KEYS[k]
    k = k + 1
  end
  if c.baseline then
    local b = {}
    b.sensitivity, b.max, pos = struct.unpack(BASELINE_FORMAT, s, pos)
    c.baseline = b
    c.baseline_key = KEYS[k]
    k = k + 1
  end
  return c, pos, k
end

-- Appends one request's header to the reply, in REPLY_HEADER's order.
local function write_reply_header(reply, admitted, now)
  reply[#reply + 1] = struct.pack(REPLY_FORMAT, admitted and 1 or 0, now)
end

-- Appends one check's verdict to the reply, in RECORD's order; allowed as 1/0.
local function write_record(reply, v)
  reply[#reply + 1] = struct.pack(RECORD_FORMAT, v.allowed and 1 or 0, v.remaining, v.retry, v.reset, v.limit,
    v.score, v.bits)
end

-- Appends a plain request's reply: write_reply_header's and write_record's in one, with no threat
-- score or factors.
local function write_plain_reply(reply, admitted, now, allowed, remaining, retry, reset, limit)
  reply[#reply + 1] = struct.pack(PLAIN_REPLY_FORMAT, admitted and 1 or 0, now, allowed and 1 or 0, remaining, retry,
    reset, limit, 0, 0)
end

-- One failure of report.lua, from ARGV[a + 1] and KEYS[k] on: its window, its keys
-- (failures_key when adaptive, penalty_key) and its penalty's numbers (false without one); then the
-- cursors after it.
local function read_failure(a, k)
  local f = {
    window = tonumber(ARGV[a + 1]), adaptive = ARGV[a + 2] == '1', penalty = ARGV[a + 3] == '1',
    failures_key = false, penalty_key = false,
  }
  a = a + FAILURE_ARGS
  if f.adaptive then
    f.failures_key = KEYS[k]
    k = k + 1
  end
  if f.penalty then
    f.penalty, a = read_penalty(a)
    f.penalty_key = KEYS[k]
    k = k + 1
  end
  return f, a, k
end
