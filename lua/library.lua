-- The library's entry points, last in its text (see src/store/script.rs). Their names end in
-- VERSION, the hash of the text, which script.rs declares first: replicas of two releases that
-- share one Redis during a rollout each call their own functions, and a release never replaces
-- another's. Redis keeps a library across restarts of the caller and copies it to replicas, so
-- a failover keeps it too; a node that lacks it (flushed, restarted without persistence, or
-- new) answers "Function not found", and the store loads the library and calls again.

local function entry(body)
  return function(keys, args)
    KEYS, ARGV = keys, args
    return body()
  end
end

redis.register_function('sluice_decide_' .. VERSION, entry(decide))
redis.register_function('sluice_report_' .. VERSION, entry(report))
redis.register_function('sluice_unblock_' .. VERSION, function(keys)
  return penalty_unblock(keys[1])
end)
