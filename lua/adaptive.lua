-- The adaptive threat score's store-side factors: the twin of the store side of src/threat.rs and
-- of the counters in src/store/local.rs.
-- KEYS: per adaptive tier, an attempts counter and a failures counter, hashes with fields
--       r (the instant, ms, at which the count restarts) and c (the count); the request's
--       reputation keys (IP, user), set by operators with a TTL.
-- adaptive_count(key, now, window, add) -> the count after adding `add` (0 reads only); a count
--       restarts one window after its first unit, and the key expires then.
-- adaptive_score(...) -> score (0-100) and factor bits (8 reputation, 16 burst, 32 failed logins),
--       on top of the client-side score and bits computed in Rust.

local function adaptive_count(key, now, window, add)
  local st = redis.call('HMGET', key, 'r', 'c')
  local reset, count = tonumber(st[1]), tonumber(st[2]) or 0
  if reset == nil or now >= reset then
    reset, count = now + window, 0
  end
  if add > 0 then
    count = count + add
    redis.call('HSET', key, 'r', reset, 'c', count)
    redis.call('PEXPIRE', key, math.max(reset - now, 1))
  end
  return count
end

local function adaptive_score(client_score, client_bits, bad_reputation, attempts, failures, limit, p)
  local score, bits = client_score, client_bits
  if bad_reputation then
    score, bits = score + p.w_reputation, bits + 8
  end
  if attempts > p.burst_multiple * limit then
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
