-- Penalty blocks: the twin of src/algorithm/penalty.rs (`Penalty`, `PenaltyState`; read its doc).
-- KEYS: one hash per tier-key (`<tier-key>:pen`) with fields v (violations in the current period),
--       r (the instant, ms, at which the violation count restarts), u (blocked until, ms) and
--       n (blocks so far).
-- penalty_read(key, now, p) -> the state; penalty_violate(key, st, now, p, count) adds violations
--       and, on reaching p.violations, blocks for min(p.base * p.factor ^ n, p.max). The state is
--       forgotten p.max after the block or the period ends (the key's TTL says the same), so the
--       escalation goes after a quiet spell.
-- penalty_unblock(key) lifts a block (an operator's action): u and v back to 0, n kept; 1 when the
--       hash exists, 0 (and nothing written) when it does not.

local function penalty_read(key, now, p)
  local st = redis.call('HMGET', key, 'v', 'r', 'u', 'n')
  st = { v = tonumber(st[1]) or 0, r = tonumber(st[2]) or 0, u = tonumber(st[3]) or 0, n = tonumber(st[4]) or 0 }
  if st.r ~= 0 and now >= math.max(st.u, st.r) + p.max then
    st = { v = 0, r = 0, u = 0, n = 0 }
  end
  return st
end

local function penalty_violate(key, st, now, p, count)
  if now >= st.r then
    st.v, st.r = 0, now + p.period
  end
  st.v = st.v + count
  if st.v >= p.violations then
    st.u = now + math.min(p.base * (p.factor ^ st.n), p.max)
    st.n, st.v, st.r = st.n + 1, 0, now + p.period
  end
  redis.call('HSET', key, 'v', st.v, 'r', st.r, 'u', st.u, 'n', st.n)
  redis.call('PEXPIRE', key, math.max(st.u, st.r) - now + p.max)
end

local function penalty_unblock(key)
  if redis.call('EXISTS', key) == 0 then
    return 0
  end
  redis.call('HSET', key, 'u', 0, 'v', 0)
  return 1
end
