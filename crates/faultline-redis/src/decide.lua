-- faultline: every limit check of one request, decided and spent as one atomic step.
--
-- The formulas are those of `faultline::limits` (GCRA, quota periods, leases, the
-- multi-policy rule), in integer microseconds. Lua numbers are doubles: every value here stays
-- below 2^52, so sums, products and floored quotients of them are exact, and every number
-- written back is formatted with %d (Lua would print 1.9e+15).
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
local floor, fmt, tonumber = math.floor, string.format, tonumber
local call = redis.call

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- How long to keep a key whose state is idle `us` microseconds from now: at least 1 ms. On
-- Redis's clock an absolute expiry (PXAT), which Redis need not rewrite for propagation; on a
-- given clock (tests) a relative one, so keys of a made-up time still expire in real time.
local at_option, in_option = 'PX', 'PEXPIRE'
if ARGV[1] == '' then
  at_option, in_option = 'PXAT', 'PEXPIREAT'
end
local function expiry(us)
  local ms = floor((us + 999) / 1000)
  if ms < 1 then
    ms = 1
  end
  if at_option == 'PXAT' then
    ms = ms + floor(now / 1000)
  end
  return fmt('%d', ms)
end

-- The end of the quota period a request at `now` starts (0 = UTC day, -1 = UTC month, N days).
local function end_after(period)
  if period == 0 then
    return (floor(now / DAY) + 1) * DAY
  elseif period > 0 then
    return now + period * DAY
  end
  -- The first instant of the next UTC month, by Howard Hinnant's civil-date algorithms.
  local z = floor(now / DAY) + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local y, m = yoe + era * 400, mp + 3
  if mp >= 10 then
    m = mp - 9
    y = y + 1
  end
  -- the month after (y, m), then days since 1970-01-01 of its first day
  if m == 12 then
    y, m = y + 1, 1
  else
    m = m + 1
  end
  if m <= 2 then
    y = y - 1
  end
  era = floor(y / 400)
  yoe = y - era * 400
  doy = floor((153 * ((m + 9) % 12) + 2) / 5)
  doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * DAY
end

local n = #KEYS
local all = true
-- The reply as if every check spends; `undo[i]` holds what check i reports if the decision is
-- refused and it admitted (nothing spent); `put[i]` what it writes if the decision admits.
local reply = { 1 }
local undo, put = {}, {}

-- Every rate and quota bucket read with one MGET (nil for a key that is absent or holds
-- another type, which the model treats as no state).
local strings, string_keys = {}, {}
for i = 1, n do
  if ARGV[4 * i - 1] ~= 'c' then
    string_keys[#string_keys + 1] = KEYS[i]
  end
end
if #string_keys > 0 then
  local values = call('MGET', unpack(string_keys))
  local j = 0
  for i = 1, n do
    if ARGV[4 * i - 1] ~= 'c' then
      j = j + 1
      strings[i] = values[j]
    end
  end
end

for i = 1, n do
  local key = KEYS[i]
  local base = 4 * i - 1
  local kind = ARGV[base]
  local a, b, c = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local at = 6 * i - 4
  if kind == 'r' then
    local t, tau = a, b
    local tat = tonumber(strings[i] or '') or now
    if tat < now then
      tat = now
    end
    local ahead = tat + t - now
    if ahead <= tau then
      local remaining = floor((tau - ahead) / t)
      reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 1, remaining, ahead, 0
      undo[i] = { remaining + 1, tat - now, 0 }
      put[i] = { 's', fmt('%d', tat + t), expiry(ahead) }
    else
      all = false
      reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 0, 0, tat - now, ahead - tau
    end
    reply[at + 4], reply[at + 5] = 0, 0
  elseif kind == 'q' then
    local limit, cost = a, b
    local resets_at, used
    local value = strings[i]
    if value then
      local r, u = string.match(value, '^(%d+):(%d+)$')
      resets_at, used = tonumber(r), tonumber(u)
    end
    if not resets_at or resets_at <= now then
      resets_at, used = end_after(c), 0
    end
    local reset = resets_at - now
    local after = used + cost
    local left = limit - used
    if left < 0 then
      left = 0
    end
    if after <= limit then
      reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 1, limit - after, reset, 0
      reply[at + 4], reply[at + 5] = resets_at, after
      undo[i] = { left, reset, used }
      put[i] = { 's', fmt('%d', resets_at) .. ':' .. fmt('%d', after), expiry(reset) }
    else
      all = false
      reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 0, left, reset, reset
      reply[at + 4], reply[at + 5] = resets_at, used
    end
  elseif kind == 'c' then
    local limit, ttl = a, b
    -- A key of another type is replaced; an absent one counts no lease.
    local ok, live = pcall(call, 'ZCOUNT', key, '(' .. fmt('%d', now), '+inf')
    local fresh = not ok
    if fresh then
      live = 0
    end
    if live < limit then
      reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 1, limit - live - 1, 0, 0
      undo[i] = { limit - live, 0, 0 }
      put[i] = { 'z', now + ttl, fresh }
    else
      all = false
      local wait = CONCURRENCY_RETRY
      local first = call('ZRANGEBYSCORE', key, '(' .. fmt('%d', now), '+inf', 'WITHSCORES',
        'LIMIT', 0, 1)
      if first[2] then
        local soonest = tonumber(first[2]) - now
        if soonest < wait then
          wait = soonest
        end
      end
      reply[at], reply[at + 1], reply[at + 2], reply[at + 3] = 0, 0, 0, wait
    end
    reply[at + 4], reply[at + 5] = 0, 0
  else
    return redis.error_reply('faultline: unknown check kind ' .. tostring(kind))
  end
end

if not all then
  reply[1] = 0
  for i = 1, n do
    local u = undo[i]
    if u then
      local at = 6 * i - 4
      reply[at + 1], reply[at + 2] = u[1], u[2]
      if put[i][1] == 's' and reply[at + 4] ~= 0 then
        reply[at + 5] = u[3] -- a quota's used count
      end
    end
  end
  return reply
end

for i = 1, n do
  local key, w = KEYS[i], put[i]
  if w[1] == 's' then
    call('SET', key, w[2], at_option, w[3])
  else
    if w[3] then
      call('DEL', key)
    else
      call('ZREMRANGEBYSCORE', key, '-inf', fmt('%d', now))
    end
    call('ZADD', key, fmt('%d', w[2]), ARGV[2])
    -- Keep the set until its last lease lapses: push the expiry out to this lease's (GT: never
    -- pull it in), and set it outright on a set that has none yet (just created).
    local until_ = expiry(w[2] - now)
    if call(in_option, key, until_, 'GT') == 0 and call('PTTL', key) == -1 then
      call(in_option, key, until_)
    end
  end
end
return reply
