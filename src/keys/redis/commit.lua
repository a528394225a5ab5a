-- One atomic change to keygate's keys and its audit events: checks everything first
-- (duplicate hash or id, owner caps, compare-and-set of updated records), then writes, bumps
-- the epoch, records each changed hash in the change log and publishes it, and adds the
-- change's audit events to the stream. A failed check writes nothing; a script runs whole or
-- not at all, so the change and its events are never one without the other.
--
-- KEYS: epoch, changes (sorted set), ids (sorted set), then per insert: key:<hash>, id:<id>,
--       owner:<owner>; then per update: key:<hash>, owner:<owner>; then per delete:
--       key:<hash>, id:<id>, owner:<owner>; then the audit stream.
-- ARGV: channel, max_per_owner (0: none), #inserts, #updates, #deletes, then per insert: hash,
--       id, record JSON, created_ms, live (1/0); then per update: hash, id, expected JSON,
--       new JSON, live (1/0); then per delete: hash, id, expected JSON; then the stream's
--       length cap, #events, and each event as JSON.
local channel, max = ARGV[1], tonumber(ARGV[2])
local ni, nu, nd = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local k, a = 4, 6
local held = {}
-- Updates first: a rotation takes the old key out of its owner's count (it shares its slot
-- with the new key) in the same batch that inserts the new one; an edit that makes a key
-- count again (a new expiry for an expired key) takes a slot, as an insert does.
if max > 0 then
  local ku, au = 4 + 3 * ni, 6 + 5 * ni
  local rising = {}
  for i = 1, nu do
    local owner, id = KEYS[ku + 1], ARGV[au + 1]
    local member = redis.call('SISMEMBER', owner, id) == 1
    if ARGV[au + 4] == '1' and not member then
      held[owner] = (held[owner] or redis.call('SCARD', owner)) + 1
      rising[#rising + 1] = owner
    elseif ARGV[au + 4] ~= '1' and member then
      held[owner] = (held[owner] or redis.call('SCARD', owner)) - 1
    end
    ku, au = ku + 2, au + 5
  end
  for _, owner in ipairs(rising) do
    if held[owner] > max then return redis.error_reply('KG_OWNER_CAP') end
  end
end
for i = 1, ni do
  if redis.call('EXISTS', KEYS[k]) == 1 or redis.call('EXISTS', KEYS[k + 1]) == 1 then
    return redis.error_reply('KG_DUPLICATE')
  end
  if max > 0 and ARGV[a + 4] == '1' then
    local owner = KEYS[k + 2]
    held[owner] = (held[owner] or redis.call('SCARD', owner)) + 1
    if held[owner] > max then return redis.error_reply('KG_OWNER_CAP') end
  end
  k, a = k + 3, a + 5
end
for i = 1, nu do
  if redis.call('GET', KEYS[k]) ~= ARGV[a + 2] then return redis.error_reply('KG_CHANGED') end
  k, a = k + 2, a + 5
end
for i = 1, nd do
  if redis.call('GET', KEYS[k]) ~= ARGV[a + 2] then return redis.error_reply('KG_CHANGED') end
  k, a = k + 3, a + 3
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local epoch = redis.call('INCR', KEYS[1])
local changed = {}
k, a = 4, 6
for i = 1, ni do
  redis.call('SET', KEYS[k], ARGV[a + 2])
  redis.call('SET', KEYS[k + 1], ARGV[a])
  redis.call('ZADD', KEYS[3], ARGV[a + 3], ARGV[a + 1])
  if ARGV[a + 4] == '1' then redis.call('SADD', KEYS[k + 2], ARGV[a + 1]) end
  changed[#changed + 1] = ARGV[a]
  k, a = k + 3, a + 5
end
for i = 1, nu do
  redis.call('SET', KEYS[k], ARGV[a + 3])
  if ARGV[a + 4] == '1' then
    redis.call('SADD', KEYS[k + 1], ARGV[a + 1])
  else
    redis.call('SREM', KEYS[k + 1], ARGV[a + 1])
  end
  changed[#changed + 1] = ARGV[a]
  k, a = k + 2, a + 5
end
for i = 1, nd do
  redis.call('DEL', KEYS[k], KEYS[k + 1])
  redis.call('ZREM', KEYS[3], ARGV[a + 1])
  redis.call('SREM', KEYS[k + 2], ARGV[a + 1])
  changed[#changed + 1] = ARGV[a]
  k, a = k + 3, a + 3
end
for _, h in ipairs(changed) do
  redis.call('ZADD', KEYS[2], epoch, h)
  redis.call('PUBLISH', channel, epoch .. ' ' .. h .. ' ' .. now_ms)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (epoch - 100000))
local cap, ne = ARGV[a], tonumber(ARGV[a + 1])
for i = 1, ne do
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', cap, '*', 'e', ARGV[a + 1 + i])
end
return epoch
