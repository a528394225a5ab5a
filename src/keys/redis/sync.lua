-- One sidecar's sync tick: a heartbeat, the suspensions it decided since the last tick, and
-- what every sidecar needs back: how many sidecars are alive and which keys are suspended.
-- Times are Redis's (TIME), in milliseconds, so sidecars' clocks do not matter.
--
-- KEYS: {ns}:sidecars (sorted set: instance id -> last heartbeat),
--       {ns}:suspended (sorted set: key hash -> when its suspension lifts).
-- ARGV: instance id, how long a heartbeat keeps an instance alive (ms), then pairs of key
--       hash and suspension length (ms).
-- Returns {live sidecars, {suspended hashes}, {ms until each lifts}}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive_for = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - alive_for)
-- Gone with the last sidecar.
redis.call('PEXPIRE', KEYS[1], alive_for)
for i = 3, #ARGV, 2 do
  -- GT: a suspension is only ever extended.
  redis.call('ZADD', KEYS[2], 'GT', now + tonumber(ARGV[i + 1]), ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local live = redis.call('ZCARD', KEYS[1])
local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local hashes, left = {}, {}
for i = 1, #entries, 2 do
  hashes[#hashes + 1] = entries[i]
  left[#left + 1] = tonumber(entries[i + 1]) - now
end
return {live, hashes, left}
