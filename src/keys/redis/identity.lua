-- The epoch poll: the store's instance token and its epoch, in one round trip. The token is a
-- random string written once, by whoever finds it missing (a new or emptied Redis): a sidecar
-- that sees another token than before knows the keys it cached came from another store.
--
-- KEYS: {ns}:epoch, {ns}:instance. ARGV: a fresh token, written if there is none.
-- Returns {token, epoch}.
local token = redis.call('GET', KEYS[2])
if not token then
  redis.call('SET', KEYS[2], ARGV[1])
  token = ARGV[1]
end
return {token, redis.call('GET', KEYS[1]) or '0'}
