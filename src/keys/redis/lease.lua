-- Grants quota leases for one key's long windows to one sidecar, atomically. For each window
-- the sidecar gets min(want, limit - used - held), and used grows by what it got: the grants
-- of a window never sum past its limit, whatever the number of sidecars. Windows are numbered
-- by Redis's clock (TIME), so sidecars with skewed clocks count into the same window, and each
-- counter expires when its window ends.
--
-- Idempotent: the sidecar reports running totals for the window (requests it admitted on its
-- own while Redis did not answer, requests it handed back unspent), and only what a total grew
-- by since the last report changes used; the reply carries the sidecar's granted total, so a
-- grant whose reply was lost (the sidecar gave up waiting, Redis ran it later) reaches the
-- sidecar with its next reply. A request retried, or run late, counts once.
--
-- Held back after an outage: each reply is numbered (n:<id>), and each request acknowledges
-- the last reply its sidecar received. Each grant records l:<id>, the most the sidecar's
-- running total of requests admitted on its own can reach before it next reports by this
-- reply (what it reported plus its fallback budget, half its share of what is left), and
-- c:<id>, the largest such bound over the replies since the last one it acknowledged (a
-- reply it never received does not change its budget). A request from a sidecar that was
-- cut off ({ns}:outage's `at`, shared by every key) starts a hold; for `hold` ms after the
-- latest one, every grant holds back, for every sidecar, its bound less what it reported.
-- Every sidecar, the requesting one and those that have reported included: a request that
-- ran late (queued in a paused Redis) looks like a report, and a sidecar may go on admitting
-- alone after it sent one.
--
-- KEYS: {ns}:outage (a hash of at, when a sidecar last came back from being cut off, ms),
--       then per window {ns}:quota:<hash>:<hour|day|month>, a hash of w (window number),
--       used, limit (the limit of the last grant, for `keys usage`), and per sidecar g:<id>,
--       f:<id>, b:<id> (its granted, fell-back and handed-back totals), n:<id>, l:<id> and
--       c:<id> (see above).
-- ARGV: the sidecar's instance id, the live sidecars it counts, 1 if it was cut off from Redis
--       since its last reply for this key (else 0), the hold (ms), 1 if it admits on its own
--       while Redis does not answer (else 0: it refuses instead, and has no budget to
--       record); then per window: kind (h, d or m), limit (0: leave the stored one), want,
--       the window number and number of the last reply the sidecar received, the window
--       number and running total of requests the sidecar admitted on its own,
--       the window number and running total of requests it handed back (totals of another
--       window than the current one are ignored).
-- Returns per window: {granted, used, window, the sidecar's granted total, held, ms the hold
-- still lasts, the reply's number}.
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local floor = math.floor

-- H. Hinnant's calendar algorithms, as in src/limits/quota.rs.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- The window containing now: its number and its end (Unix seconds).
local function window(kind)
  if kind == 'h' then
    local id = floor(now / 3600)
    return id, (id + 1) * 3600
  elseif kind == 'd' then
    local id = floor(now / 86400)
    return id, (id + 1) * 86400
  end
  local y, m = civil_from_days(floor(now / 86400))
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return y * 12 + (m - 1), days_from_civil(ny, nm, 1) * 86400
end

local me, live = ARGV[1], math.max(tonumber(ARGV[2]), 1)
local recovering, hold = ARGV[3] == '1', tonumber(ARGV[4])
local falls_back = ARGV[5] == '1'
local back = tonumber(redis.call('HGET', KEYS[1], 'at'))
if recovering then
  back = now_ms
  redis.call('HSET', KEYS[1], 'at', back)
end
local holding = back ~= nil and now_ms - back < hold
local hold_left = holding and (back + hold - now_ms) or 0
local out = {}
for i = 2, #KEYS do
  local a = 5 + (i - 2) * 9
  local kind, limit, want = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local ack_window, ack = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local fell_window, fell = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local back_window, back = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9])
  local id, ends = window(kind)
  local stored = redis.call('HMGET', KEYS[i], 'w', 'used', 'g:' .. me, 'f:' .. me, 'b:' .. me,
    'n:' .. me, 'l:' .. me, 'c:' .. me)
  local used, mine, fell_seen, back_seen, replies, latest, cap = 0, 0, 0, 0, 0, 0, 0
  if tonumber(stored[1]) == id then
    used = tonumber(stored[2]) or 0
    mine = tonumber(stored[3]) or 0
    fell_seen = tonumber(stored[4]) or 0
    back_seen = tonumber(stored[5]) or 0
    replies = tonumber(stored[6]) or 0
    latest = tonumber(stored[7]) or 0
    cap = tonumber(stored[8]) or 0
  else
    -- A new window: every sidecar's totals start over.
    redis.call('DEL', KEYS[i])
  end
  if fell_window == id and fell > fell_seen then
    used = used + (fell - fell_seen)
    fell_seen = fell
  end
  if back_window == id and back > back_seen then
    used = math.max(used - (back - back_seen), 0)
    back_seen = back
  end
  if ack_window == id and ack == replies then
    -- It goes by the last reply.
    cap = latest
  end
  local held = 0
  if holding then
    local fields = {}
    local all = redis.call('HGETALL', KEYS[i])
    for j = 1, #all, 2 do fields[all[j]] = tonumber(all[j + 1]) end
    fields['c:' .. me], fields['f:' .. me] = cap, fell_seen
    for field, bound in pairs(fields) do
      if string.sub(field, 1, 2) == 'c:' then
        held = held + math.max(bound - (fields['f:' .. string.sub(field, 3)] or 0), 0)
      end
    end
  end
  local granted = math.min(want, math.max(limit - used - held, 0))
  used = used + granted
  mine = mine + granted
  replies = replies + 1
  latest = fell_seen
  if limit > 0 and falls_back then latest = fell_seen + floor(math.max(limit - used - held, 0) / (2 * live)) end
  cap = math.max(cap, latest)
  redis.call('HSET', KEYS[i], 'w', id, 'used', used,
    'g:' .. me, mine, 'f:' .. me, fell_seen, 'b:' .. me, back_seen,
    'n:' .. me, replies, 'l:' .. me, latest, 'c:' .. me, cap)
  if limit > 0 then redis.call('HSET', KEYS[i], 'limit', limit) end
  redis.call('EXPIREAT', KEYS[i], ends)
  out[#out + 1] = {granted, used, id, mine, held, hold_left, replies}
end
return out
