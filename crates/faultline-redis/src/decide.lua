-- faultline: the limit checks of a batch of requests, each request decided and spent as one
-- atomic step, the requests one after the other in the order given.
--
-- The formulas are those of `faultline::limits` (GCRA, quota periods, leases, the
-- multi-policy rule), in integer microseconds. Lua numbers are doubles: every value here stays
-- below 2^52, so sums, products and floored quotients of them are exact. The states written
-- are formatted here with '%d' (Lua's integer format, exact below 2^52, and much cheaper for
-- Redis than the 17-digit form it writes a Lua number in); other numbers are handed to
-- redis.call as numbers (Redis writes them with 17 significant digits: exact integers).
--
-- A batch decides exactly as if its requests ran one script each, one after the other: a later
-- request sees what an earlier one spent. Rate and quota states are read once for the whole
-- batch (one MGET), kept in a table as the batch changes them, and written once per bucket at
-- the end (the last state, one SET each); a concurrency check first writes out the pending
-- state of its key, and works on its sorted set directly. Redis's TIME is read at most once.
--
-- The script is written for the cost per call: the per-request work builds no closure and no
-- table beyond the batch's few; every redis.call is counted (each costs about a microsecond).
--
-- KEYS      the buckets of every request of the batch, request after request (the keys of
--           one request all under its group's hash tag)
-- ARGV[1]   the number of requests in the batch
-- ARGV[2]   "1" when any request has a concurrency check, else "0"
-- ARGV[3]   the number of distinct rules m in the batch (requests of one policy share one)
-- ARGV[4..] the m rules, numbered from 1, four arguments each, a kind then its numbers:
--             rate         "r", T (emission interval), tau (burst tolerance), 0
--             quota        "q", limit, cost, period (0 = UTC day, -1 = UTC month, N = N days)
--             concurrency  "c", limit, lease time to live, 0
-- then      each request in turn:
--             its head: its number of checks n (its keys are the next n of KEYS) when it is
--             decided on Redis's TIME and takes no lease; else "n:now:lease" or
--             "n:now:lease:released", now in unix microseconds or empty for Redis's TIME,
--             lease the id its concurrency checks take, released the ids (separated by
--             spaces) of leases its process has given back, which its concurrency checks
--             remove before they count
--             its n checks in order, each the number of its rule
--
-- (Every argument costs Redis a parse and a Lua string: a request of one rate policy is two,
-- its head and its rule's number, and the rule's numbers come once per batch.)
--
-- Returns one flat list: for each request in order its admitted (1 or 0), then per check the
--           state it was decided on, before any spending, from which the caller derives the
--           outcome (remaining, reset, retry after) with the same formulas:
--             rate         ahead: max(arrival time, now) + T - now (admits when <= tau)
--             quota        resets_at_us, reset_us (resets_at - now), used (admits when
--                          used + cost <= limit)
--             concurrency  the live leases (admits when < limit), and when they do not admit,
--                          the wait until the first lapses (else 0)

local call, floor, tonumber, format = redis.call, math.floor, tonumber, string.format
local DAY = 86400000000

local count = tonumber(ARGV[1])

-- The rules, by their number as written in ARGV: kind and numbers.
local kinds, ra, rb, rc = {}, {}, {}, {}
local first_request
do
  local m = tonumber(ARGV[3])
  local at = 4
  for id = 1, m do
    id = tostring(id)
    kinds[id], ra[id], rb[id], rc[id] =
      ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
    at = at + 4
  end
  first_request = at
end

-- A request's head: its number of checks, its clock (nil: Redis's), its lease id and the ids
-- of the leases given back (a list, or nil: none).
local function head(h)
  local n = tonumber(h)
  if n then
    return n, nil, '', nil
  end
  local checks, now, lease, released = string.match(h, '^(%d+):(%-?%d*):([^:]*):?(.*)$')
  local ids
  if released ~= '' then
    ids = {}
    for id in string.gmatch(released, '%S+') do
      ids[#ids + 1] = id
    end
  end
  return tonumber(checks), tonumber(now), lease, ids
end

-- Redis's TIME, read at most once per batch (by the first request that needs it).
local redis_now
-- The keys this batch wrote, each at an index j of its own: `slot[key] = j`, `keys[j] = key`;
-- `state[j]` is the bucket's state for a later request to read (false: no rate or quota state
-- any more, a concurrency check made it a sorted set); when `dirty[j]`, that state is still to
-- be written, with the expiry option `option[j]` and its argument `arg[j]`. (Arrays, and one
-- hash per key: this is the batch's inner loop.)
local slot, keys, state, dirty, option, arg, written = {}, {}, {}, {}, {}, {}, 0

-- Sends the pending write of `key`, if any.
local function flush(key)
  local j = slot[key]
  if j and dirty[j] then
    local o = option[j]
    if o == 'KEEPTTL' then
      call('SET', key, state[j], 'KEEPTTL')
    else
      call('SET', key, state[j], o, arg[j])
    end
    dirty[j] = false
  end
end

-- Records the new state of `key` (written at the end of the batch). KEEPTTL keeps the expiry of
-- a write still pending (a quota period a request earlier in the batch began).
local function put(key, value, o, a)
  local j = slot[key]
  if not j then
    written = written + 1
    j = written
    slot[key], keys[j] = j, key
  elseif o == 'KEEPTTL' and dirty[j] then
    o, a = option[j], arg[j]
  end
  state[j], dirty[j], option[j], arg[j] = value, true, o, a
end

-- A key's state as the batch left it, or as read at its start (false: none).
local read
local function current(key, i)
  local j = slot[key]
  if j then
    return state[j]
  end
  return read[i]
end

-- Per key index: the rate state as read, a number or nil (pass 1 to pass 3).
local before = {}

-- Every rate and quota bucket of the batch read at once (false: absent, or a key of another
-- type, which the model treats as no state). (MGET, not GET: MGET answers nil for a key of
-- another type where GET fails.)
if ARGV[2] ~= '1' then
  read = call('MGET', unpack(KEYS))
else
  local keys, index = {}, {}
  local i, at = 0, first_request
  for _ = 1, count do
    local n = head(ARGV[at])
    at = at + 1
    for _ = 1, n do
      i = i + 1
      if kinds[ARGV[at]] ~= 'c' then
        keys[#keys + 1] = KEYS[i]
        index[i] = #keys
      end
      at = at + 1
    end
  end
  read = {}
  if #keys > 0 then
    local got = call('MGET', unpack(keys))
    for i, j in pairs(index) do
      read[i] = got[j]
    end
  end
end

local reply = {}

-- Decides the request whose keys follow KEYS[k], whose arguments start at ARGV[a] and whose
-- answer starts at reply[r]; returns where the next request's start.
local function decide(k, a, r0)
  -- (The plain head, the common one, read without a call to `head`.)
  local n, now, lease, released = tonumber(ARGV[a]), nil, '', nil
  if not n then
    n, now, lease, released = head(ARGV[a])
  end
  local given = now ~= nil
  if not given then
    if not redis_now then
      local t = call('TIME')
      redis_now = t[1] * 1000000 + t[2]
    end
    now = redis_now
  end
  local first = a + 1
  -- Concurrency only: `now` as an exclusive score bound, and the sets of another type to replace.
  local after_now, wrong_type
  -- Quotas whose stored period goes on: their key already expires at its end.
  local same_period

  -- Pass 1: every check against the state as it is.
  reply[r0] = 1
  local all = true
  local at, r = first, r0 + 1
  for i = k + 1, k + n do
    local key, id = KEYS[i], ARGV[at]
    local kind = kinds[id]
    if kind == 'r' then
      local t, tau = ra[id], rb[id]
      -- (A state written on Redis's clock ends in .5: see pass 3.) `current`, inline: this is
      -- the per-request path of the commonest check.
      local j, tat = slot[key], nil
      if j then
        tat = tonumber(state[j])
      else
        tat = tonumber(read[i])
      end
      before[i] = tat
      if not tat or tat < now then
        tat = now
      else
        tat = floor(tat)
      end
      local ahead = tat + t - now
      reply[r] = ahead
      if ahead > tau then
        all = false
      end
      at, r = at + 1, r + 1
    elseif kind == 'q' then
      local limit, cost, period = ra[id], rb[id], rc[id]
      local resets_at, used
      local value = current(key, i)
      if type(value) == 'string' then
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
      reply[r], reply[r + 1], reply[r + 2] = resets_at, resets_at - now, used
      if used + cost > limit then
        all = false
      end
      at, r = at + 1, r + 3
    elseif kind == 'c' then
      local limit = ra[id]
      -- The sorted set is read as it is now: a rate or quota state still pending goes first.
      flush(key)
      if released then
        -- Leases given back whose own ZREM may still be on its way (a key of another type
        -- holds none: its error is ignored).
        pcall(call, 'ZREM', key, unpack(released))
      end
      -- A key of another type is replaced; an absent one counts no lease.
      after_now = after_now or format('(%d', now)
      local ok, live = pcall(call, 'ZCOUNT', key, after_now, '+inf')
      if not ok then
        live = 0
        wrong_type = wrong_type or {}
        wrong_type[i] = true
      end
      if live < limit then
        reply[r], reply[r + 1] = live, 0
      else
        all = false
        local wait = 1000000
        -- (A key of another type holds no lease: nothing lapses sooner.)
        if not (wrong_type and wrong_type[i]) then
          local soonest = call('ZRANGEBYSCORE', key, after_now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
          if soonest[2] then
            local left = tonumber(soonest[2]) - now
            if left < wait then
              wait = left
            end
          end
        end
        reply[r], reply[r + 1] = live, wait
      end
      at, r = at + 1, r + 2
    else
      return nil, redis.error_reply('faultline: unknown check kind ' .. tostring(kind))
    end
  end
  local next_a, next_r = at, r

  -- Refused: nothing is spent.
  if not all then
    reply[r0] = 0
    return k + n, next_a, next_r
  end

  -- Pass 3, admitted: every check spends. Keys expire when their state is idle: on Redis's
  -- clock at an absolute time (PXAT, which Redis need not rewrite for propagation), on a given
  -- clock (tests) after a relative one, so keys of a made-up time still expire in real time.
  --
  -- A rate state on Redis's clock is written as its arrival time plus one half (a mark: the
  -- microseconds stay exact, and a reader floors them away), and its key expires at the first
  -- whole second at or after that time. A marked state's key therefore expires at a moment its
  -- value tells: when the new arrival time falls in the same second, the write keeps that
  -- expiry (KEEPTTL, which costs Redis much less than a new PXAT). Unmarked states (a given
  -- clock's, an older version's) always get a new expiry.
  at, r = first, r0 + 1
  for i = k + 1, k + n do
    local key, id = KEYS[i], ARGV[at]
    local kind = kinds[id]
    if kind == 'r' then
      local idle_us = reply[r]
      local tat = now + idle_us
      if given then
        local ms = floor((idle_us + 999) / 1000)
        if ms < 1 then
          ms = 1
        end
        put(key, format('%d', tat), 'PX', ms)
      else
        local until_ms = floor((tat + 999999) / 1000000) * 1000
        local old = before[i]
        if old and old ~= floor(old) and floor((floor(old) + 999999) / 1000000) * 1000 == until_ms then
          put(key, format('%d.5', tat), 'KEEPTTL')
        else
          put(key, format('%d.5', tat), 'PXAT', format('%d', until_ms))
        end
      end
      at, r = at + 1, r + 1
    elseif kind == 'q' then
      local idle_us = reply[r + 1]
      local ms = floor((idle_us + 999) / 1000)
      if ms < 1 then
        ms = 1
      end
      local value = format('%d:%d', reply[r], reply[r + 2] + rb[id])
      if given then
        put(key, value, 'PX', ms)
      elseif same_period and same_period[i] then
        -- The period's end has not moved: the expiry set when it began still holds.
        put(key, value, 'KEEPTTL')
      else
        put(key, value, 'PXAT', floor(now / 1000) + ms)
      end
      at, r = at + 1, r + 3
    else
      local ttl = rb[id]
      local expires = now + ttl
      flush(key)
      if wrong_type and wrong_type[i] then
        call('DEL', key)
      else
        call('ZREMRANGEBYSCORE', key, '-inf', now)
      end
      call('ZADD', key, expires, lease)
      local j = slot[key]
      if not j then
        written = written + 1
        j = written
        slot[key], keys[j] = j, key
      end
      state[j], dirty[j] = false, false
      -- Keep the set until its last lease lapses: push the expiry out to this lease's (GT:
      -- never pull it in), and set it outright on a set that has none yet (just created).
      local ms = floor((ttl + 999) / 1000)
      if ms < 1 then
        ms = 1
      end
      local o, until_ = 'PEXPIREAT', floor(now / 1000) + ms
      if given then
        o, until_ = 'PEXPIRE', ms
      end
      if call(o, key, until_, 'GT') == 0 and call('PTTL', key) == -1 then
        call(o, key, until_)
      end
      at, r = at + 1, r + 2
    end
  end
  return k + n, next_a, next_r
end

local k, a, r = 0, first_request, 1
for _ = 1, count do
  local next_k, next_a, next_r = decide(k, a, r)
  if next_k == nil then
    -- An unknown kind: the error reply is the second value.
    return next_a
  end
  k, a, r = next_k, next_a, next_r
end
for j = 1, written do
  if dirty[j] then
    local o = option[j]
    if o == 'KEEPTTL' then
      call('SET', keys[j], state[j], 'KEEPTTL')
    else
      call('SET', keys[j], state[j], o, arg[j])
    end
  end
end
return reply
