-- faultline: every limit check of one request, decided and spent as one atomic step.
--
-- The formulas are those of `faultline::limits` (GCRA, quota periods, leases, the
-- multi-policy rule), in integer microseconds. Lua numbers are doubles: every value here stays
-- below 2^52, so sums, products and floored quotients of them are exact. Numbers are handed to
-- redis.call as numbers (Redis writes them with 17 significant digits: exact integers); only a
-- quota's "resets_at:used" is formatted here.
--
-- The script is written for the cost per call: no closure or table is built per call beyond
-- the reply and, with a concurrency check, the list of keys to read; one read (MGET) for
-- every rate and quota bucket, one SET per spent bucket.
--
-- KEYS[i]   the bucket of check i (all under one hash tag)
-- ARGV[1]   now in unix microseconds, or "" for Redis's own TIME
-- ARGV[2]   the lease id a concurrency check takes
-- ARGV[3..] the checks in order, each a kind then its numbers:
--             rate         "r", T (emission interval), tau (burst tolerance)
--             quota        "q", limit, cost, period (0 = UTC day, -1 = UTC month, N = N days)
--             concurrency  "c", limit, lease time to live
--
-- Returns { admitted, then per check: admitted, remaining, reset_us, retry_after_us, and for
--           a quota also resets_at_us and used }.

local call, floor, tonumber = redis.call, math.floor, tonumber

local now
local given = ARGV[1] ~= ''
if given then
  now = tonumber(ARGV[1])
else
  local t = call('TIME')
  now = t[1] * 1000000 + t[2]
end
local now_ms = floor(now / 1000)
local DAY = 86400000000
-- Concurrency only: `now` as an exclusive score bound, and the sets of another type to replace.
local after_now, wrong_type
-- Quotas whose stored period goes on: their key already expires at its end (on Redis's clock).
local same_period

local n = #KEYS

-- Every rate and quota bucket read at once (nil: absent, or a key of another type, which the
-- model treats as no state).
local values
local plain = true
do
  local at = 3
  for i = 1, n do
    local kind = ARGV[at]
    if kind == 'c' then
      plain = false
      at = at + 3
    elseif kind == 'q' then
      at = at + 4
    else
      at = at + 3
    end
  end
end
-- (MGET, not GET: MGET answers nil for a key of another type where GET fails.)
if plain then
  values = call('MGET', unpack(KEYS))
else
  local keys, index = {}, {}
  local at = 3
  for i = 1, n do
    local kind = ARGV[at]
    if kind ~= 'c' then
      keys[#keys + 1] = KEYS[i]
      index[i] = #keys
    end
    at = at + (kind == 'q' and 4 or 3)
  end
  values = {}
  if #keys > 0 then
    local got = call('MGET', unpack(keys))
    for i, j in pairs(index) do
      values[i] = got[j]
    end
  end
end

-- Pass 1: every check against the state as it is. The reply is written as if the decision
-- admits; a refusal rewrites the spent numbers of the checks that admitted (pass 2).
local reply = { 1 }
local all = true
local at, r = 3, 2
for i = 1, n do
  local kind = ARGV[at]
  if kind == 'r' then
    local t, tau = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    local tat = tonumber(values[i]) or now
    if tat < now then
      tat = now
    end
    local ahead = tat + t - now
    if ahead <= tau then
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3] = 1, floor((tau - ahead) / t), ahead, 0
    else
      all = false
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3] = 0, 0, tat - now, ahead - tau
    end
    at, r = at + 3, r + 4
  elseif kind == 'q' then
    local limit, cost, period = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
    local resets_at, used
    local value = values[i]
    if value then
      local a, b = string.match(value, '^(%d+):(%d+)$')
      resets_at, used = tonumber(a), tonumber(b)
    end
    if resets_at and resets_at > now then
      same_period = same_period or {}
      same_period[i] = true
    else
      used = 0
      if period == 0 then
        resets_at = (floor(now / DAY) + 1) * DAY
      elseif period > 0 then
        resets_at = now + period * DAY
      else
        -- The first instant of the next UTC month (Howard Hinnant's civil-date algorithms).
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
        resets_at = (era * 146097 + doe - 719468) * DAY
      end
    end
    local reset = resets_at - now
    local after = used + cost
    if after <= limit then
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3] = 1, limit - after, reset, 0
      reply[r + 4], reply[r + 5] = resets_at, after
    else
      all = false
      local left = limit - used
      if left < 0 then
        left = 0
      end
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3] = 0, left, reset, reset
      reply[r + 4], reply[r + 5] = resets_at, used
    end
    at, r = at + 4, r + 6
  elseif kind == 'c' then
    local limit = tonumber(ARGV[at + 1])
    -- A key of another type is replaced; an absent one counts no lease.
    after_now = after_now or string.format('(%d', now)
    local ok, live = pcall(call, 'ZCOUNT', KEYS[i], after_now, '+inf')
    if not ok then
      live = 0
      wrong_type = wrong_type or {}
      wrong_type[i] = true
    end
    if live < limit then
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3] = 1, limit - live - 1, 0, 0
    else
      all = false
      local wait = 1000000
      local first = call('ZRANGEBYSCORE', KEYS[i], after_now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      if first[2] then
        local soonest = tonumber(first[2]) - now
        if soonest < wait then
          wait = soonest
        end
      end
      reply[r], reply[r + 1], reply[r + 2], reply[r + 3] = 0, 0, 0, wait
    end
    at, r = at + 3, r + 4
  else
    return redis.error_reply('faultline: unknown check kind ' .. tostring(kind))
  end
end

-- Pass 2, refused: nothing is spent; each check that admitted reports its state unspent.
if not all then
  reply[1] = 0
  at, r = 3, 2
  for i = 1, n do
    local kind = ARGV[at]
    if reply[r] == 1 then
      if kind == 'r' then
        -- One emission interval less ahead: one more remaining, reset one T sooner.
        reply[r + 1], reply[r + 2] = reply[r + 1] + 1, reply[r + 2] - tonumber(ARGV[at + 1])
      elseif kind == 'q' then
        local cost = tonumber(ARGV[at + 2])
        reply[r + 1], reply[r + 5] = reply[r + 1] + cost, reply[r + 5] - cost
      else
        reply[r + 1] = reply[r + 1] + 1
      end
    end
    if kind == 'q' then
      at, r = at + 4, r + 6
    else
      at, r = at + 3, r + 4
    end
  end
  return reply
end

-- Pass 3, admitted: every check spends. Keys expire when their state is idle: on Redis's clock
-- at an absolute time (PXAT, which Redis need not rewrite for propagation), on a given clock
-- (tests) after a relative one, so keys of a made-up time still expire in real time.
at, r = 3, 2
for i = 1, n do
  local kind = ARGV[at]
  local idle_us
  if kind == 'r' then
    idle_us = reply[r + 2]
    local ms = floor((idle_us + 999) / 1000)
    if ms < 1 then
      ms = 1
    end
    if given then
      call('SET', KEYS[i], now + idle_us, 'PX', ms)
    else
      call('SET', KEYS[i], now + idle_us, 'PXAT', now_ms + ms)
    end
    at, r = at + 3, r + 4
  elseif kind == 'q' then
    idle_us = reply[r + 2]
    local ms = floor((idle_us + 999) / 1000)
    if ms < 1 then
      ms = 1
    end
    local value = string.format('%d:%d', reply[r + 4], reply[r + 5])
    if given then
      call('SET', KEYS[i], value, 'PX', ms)
    elseif same_period and same_period[i] then
      -- The period's end has not moved: the expiry set when it began still holds.
      call('SET', KEYS[i], value, 'KEEPTTL')
    else
      call('SET', KEYS[i], value, 'PXAT', now_ms + ms)
    end
    at, r = at + 4, r + 6
  else
    local key, ttl = KEYS[i], tonumber(ARGV[at + 2])
    local expires = now + ttl
    if wrong_type and wrong_type[i] then
      call('DEL', key)
    else
      call('ZREMRANGEBYSCORE', key, '-inf', now)
    end
    call('ZADD', key, expires, ARGV[2])
    -- Keep the set until its last lease lapses: push the expiry out to this lease's (GT: never
    -- pull it in), and set it outright on a set that has none yet (just created).
    local ms = floor((ttl + 999) / 1000)
    if ms < 1 then
      ms = 1
    end
    local option, until_ = 'PEXPIREAT', now_ms + ms
    if given then
      option, until_ = 'PEXPIRE', ms
    end
    if call(option, key, until_, 'GT') == 0 and call('PTTL', key) == -1 then
      call(option, key, until_)
    end
    at, r = at + 3, r + 4
  end
end
return reply
