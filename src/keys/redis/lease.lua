-- Grants quota leases for one key's long windows, atomically. For each window the sidecar
-- gets min(want, limit - used), and used grows by what it got: the grants of a window never
-- sum past its limit, whatever the number of sidecars. Windows are numbered by Redis's clock
-- (TIME), so sidecars with skewed clocks count into the same window, and each counter
-- expires when its window ends.
--
-- KEYS: per window, {ns}:quota:<hash>:<hour|day|month>, a hash of w (window number), used,
--       limit (the limit of the last grant, for `keys usage`).
-- ARGV: per window: kind (h, d or m), limit (0: leave the stored one), want, then the window
--       number and count of requests the sidecar admitted on its own while Redis was
--       unreachable (added to used only if that window is still the current one), then the
--       window number and count of requests a stopping sidecar hands back: granted to it,
--       never admitted (taken off used, never below 0, only in the current window).
-- Returns per window: {granted, used, window}.
local t = redis.call('TIME')
local now = tonumber(t[1])
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

local out = {}
for i = 1, #KEYS do
  local a = (i - 1) * 7
  local kind, limit, want = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local late_window, late = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local back_window, back = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local id, ends = window(kind)
  local stored = redis.call('HMGET', KEYS[i], 'w', 'used')
  local used = 0
  if tonumber(stored[1]) == id then used = tonumber(stored[2]) or 0 end
  if late_window == id then used = used + late end
  if back_window == id then used = math.max(used - back, 0) end
  local granted = math.min(want, math.max(limit - used, 0))
  used = used + granted
  redis.call('HSET', KEYS[i], 'w', id, 'used', used)
  if limit > 0 then redis.call('HSET', KEYS[i], 'limit', limit) end
  redis.call('EXPIREAT', KEYS[i], ends)
  out[i] = {granted, used, id}
end
return out
