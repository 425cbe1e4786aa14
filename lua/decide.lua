-- The entry script: one call decides one request against every tier that applies to it.
-- The algorithm files in lua/ are prepended to this one (see src/store/script.rs).
--
-- KEYS  per tier in ARGV order: sliding_window -> 1 key (hash); sliding_log -> 2 keys (zset, seq).
--       Each tier's keys share one hash tag, so a tier-key lives in one Cluster slot.
-- ARGV  [1] now in ms, or 0 to read Redis TIME (the normal case: one clock for every replica)
--       [2] 1 to consume when admitted, 0 for a dry run
--       [3] n, the number of tiers
--       then per tier 5 values: algorithm (1 sliding_window, 2 sliding_log), limit, window_ms,
--       cost, shadow (1 = evaluate and report, never deny)
-- Reply {admitted (1/0), now_ms, then per tier: allowed (1/0), remaining, retry_after_ms,
--       reset_after_ms}
--
-- All or nothing: the request is admitted only when every enforcing tier allows it, and only then
-- does any tier consume. A denied request changes no count.

local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local commit = ARGV[2] == '1'
local n = tonumber(ARGV[3])

local admitted = true
local verdicts = {}
local next_key = 1
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local algorithm = tonumber(ARGV[a + 1])
  local limit, window, cost = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local shadow = ARGV[a + 5] == '1'
  local v = { algorithm = algorithm, window = window, cost = cost, key = KEYS[next_key] }
  if algorithm == 1 then
    v.allowed, v.remaining, v.retry, v.reset, v.state = sliding_window_check(v.key, now, limit, window, cost)
    next_key = next_key + 1
  elseif algorithm == 2 then
    v.seq_key = KEYS[next_key + 1]
    v.allowed, v.remaining, v.retry, v.reset = sliding_log_check(v.key, now, limit, window, cost)
    next_key = next_key + 2
  else
    return redis.error_reply('ERR sluice: unknown algorithm ' .. tostring(ARGV[a + 1]))
  end
  if not v.allowed and not shadow then
    admitted = false
  end
  verdicts[i] = v
end

if admitted and commit then
  for i = 1, n do
    local v = verdicts[i]
    if v.algorithm == 1 then
      sliding_window_commit(v.key, v.state, v.window, v.cost)
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
end
return reply
