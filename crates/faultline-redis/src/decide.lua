-- faultline: every limit check of one request, decided and spent as one atomic step.
--
-- The formulas are those of `faultline::limits` (GCRA, quota periods, leases, the
-- multi-policy rule), in integer microseconds. Lua numbers are doubles: every value here stays
-- below 2^53, so they are exact, and every number written back is formatted with %d.
--
-- KEYS[i]   the bucket of check i (all under one hash tag)
-- ARGV[1]   now in unix microseconds, or "" for Redis's own TIME
-- ARGV[2]   the lease id a concurrency check takes
-- ARGV[3 + 4(i-1) ..] check i: kind, a, b, c
--             rate         "r", T (emission interval), tau (burst tolerance), limit
--             quota        "q", limit, cost, period (0 = UTC day, -1 = UTC month, N = N days)
--             concurrency  "c", limit, lease time to live, 0
--
-- Returns { admitted, then per check: admitted, remaining, reset_us, retry_after_us,
--           resets_at_us (quota, else 0), used (quota, else 0) }.

local DAY = 86400000000
local CONCURRENCY_RETRY = 1000000

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local lease = ARGV[2]

-- a // b for integers a >= 0, b > 0, corrected for the rounding of the double quotient.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function int(x)
  return string.format('%d', x)
end

-- Milliseconds to keep a key whose state is idle `us` microseconds from now (at least 1).
local function ttl_ms(us)
  local ms = idiv(us + 999, 1000)
  if ms < 1 then
    ms = 1
  end
  return int(ms)
end

-- Days since 1970-01-01 of a proleptic Gregorian date, and back (Howard Hinnant's).
local function days_from_civil(y, m, d)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m
  if mp < 10 then
    m = mp + 3
  else
    m = mp - 9
  end
  local y = yoe + era * 400
  if m <= 2 then
    y = y + 1
  end
  return y, m
end

-- The end of the quota period a request at `now` starts.
local function end_after(period)
  if period == 0 then
    return (math.floor(now / DAY) + 1) * DAY
  elseif period < 0 then
    local y, m = civil_from_days(math.floor(now / DAY))
    if m == 12 then
      y, m = y + 1, 1
    else
      m = m + 1
    end
    return days_from_civil(y, m, 1) * DAY
  else
    return now + period * DAY
  end
end

-- A string value, or nil when the key holds another type.
local function get(key)
  local ok, value = pcall(redis.call, 'GET', key)
  if ok and value then
    return value
  end
  return nil
end

local n = #KEYS
local all = true
-- Per check: the outcome if spent, the outcome if not, and what to write.
local spent, kept, writes = {}, {}, {}

for i = 1, n do
  local key = KEYS[i]
  local base = 3 + 4 * (i - 1)
  local kind = ARGV[base]
  local a, b, c = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  if kind == 'r' then
    local t, tau = a, b
    local tat = tonumber(get(key) or '') or now
    if tat < now then
      tat = now
    end
    local new_tat = tat + t
    local ahead = new_tat - now
    if ahead <= tau then
      local remaining = idiv(tau - ahead, t)
      spent[i] = { 1, remaining, ahead, 0, 0, 0 }
      kept[i] = { 1, remaining + 1, tat - now, 0, 0, 0 }
      writes[i] = { 'r', int(new_tat), ttl_ms(ahead) }
    else
      all = false
      spent[i] = { 0, 0, tat - now, ahead - tau, 0, 0 }
      kept[i] = spent[i]
    end
  elseif kind == 'q' then
    local limit, cost, period = a, b, c
    local resets_at, used
    local value = get(key)
    if value then
      local r, u = string.match(value, '^(%d+):(%d+)$')
      resets_at, used = tonumber(r), tonumber(u)
    end
    if not resets_at or resets_at <= now then
      resets_at, used = end_after(period), 0
    end
    local reset = resets_at - now
    local after = used + cost
    local left = limit - used
    if left < 0 then
      left = 0
    end
    if after <= limit then
      spent[i] = { 1, limit - after, reset, 0, resets_at, after }
      kept[i] = { 1, left, reset, 0, resets_at, used }
      writes[i] = { 'q', int(resets_at) .. ':' .. int(after), ttl_ms(reset) }
    else
      all = false
      spent[i] = { 0, left, reset, reset, resets_at, used }
      kept[i] = spent[i]
    end
  elseif kind == 'c' then
    local limit, ttl = a, b
    if redis.call('TYPE', key).ok ~= 'zset' then
      writes[i] = { 'replace' }
    end
    local live = 0
    if not writes[i] then
      live = redis.call('ZCOUNT', key, '(' .. int(now), '+inf')
    end
    if live < limit then
      spent[i] = { 1, limit - live - 1, 0, 0, 0, 0 }
      kept[i] = { 1, limit - live, 0, 0, 0, 0 }
      writes[i] = { 'c', int(now + ttl), writes[i] ~= nil }
    else
      all = false
      local wait = CONCURRENCY_RETRY
      local first = redis.call('ZRANGEBYSCORE', key, '(' .. int(now), '+inf', 'WITHSCORES',
        'LIMIT', 0, 1)
      if first[2] then
        local soonest = tonumber(first[2]) - now
        if soonest < wait then
          wait = soonest
        end
      end
      spent[i] = { 0, 0, 0, wait, 0, 0 }
      kept[i] = spent[i]
    end
  else
    return redis.error_reply('faultline: unknown check kind ' .. tostring(kind))
  end
end

local reply = { all and 1 or 0 }
for i = 1, n do
  local outcome = all and spent[i] or kept[i]
  for j = 1, 6 do
    reply[#reply + 1] = outcome[j]
  end
end
if not all then
  return reply
end

for i = 1, n do
  local key, w = KEYS[i], writes[i]
  if w[1] == 'c' then
    if w[3] then
      redis.call('DEL', key)
    else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
    end
    redis.call('ZADD', key, w[2], lease)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, ttl_ms(tonumber(last[2]) - now))
  else
    redis.call('SET', key, w[2], 'PX', w[3])
  end
end
return reply
