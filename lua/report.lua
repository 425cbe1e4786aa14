-- report(): counts one reported failure (e.g. a failed login) on tier-keys, with lua/adaptive.lua,
-- lua/penalty.lua and lua/protocol.lua, which come before it in the library (see src/store/script.rs).
-- KEYS, ARGV and reply: see protocol.lua (read_failure); all keys in one Cluster slot.

local function report()
  local header, a = read_report_header()
  local now = header.now
  local k = 1
  for _ = 1, header.n do
    local f
    f, a, k = read_failure(a, k)
    if f.failures_key then
      adaptive_count(f.failures_key, now, f.window, 1)
    end
    if f.penalty then
      local st = penalty_read(f.penalty_key, now, f.penalty)
      -- A failure while blocked adds nothing: the block already stands.
      if st.u <= now then
        penalty_violate(f.penalty_key, st, now, f.penalty, 1)
      end
    end
  end
  return 1
end
