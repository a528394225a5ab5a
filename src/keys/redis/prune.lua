-- Takes keys that no longer count against the owner cap (expired by time alone, which no
-- write reports) out of their owner's set, each only if its record is still exactly the one
-- the caller judged: a concurrent change (an edit lifting the expiry) keeps it in.
--
-- KEYS: owner set, then per candidate: key:<hash>.  ARGV: per candidate: id, record JSON.
local removed = 0
for i = 2, #KEYS do
  local id, doc = ARGV[2 * (i - 1) - 1], ARGV[2 * (i - 1)]
  if redis.call('GET', KEYS[i]) == doc then
    removed = removed + redis.call('SREM', KEYS[1], id)
  end
end
return removed
