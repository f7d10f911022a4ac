package redisstore

import "github.com/redis/go-redis/v9"

// The limiter functions are shared by both scripts. Each works on one
// counter key, takes one request or a lease of up to n (see store.Ask;
// ahead: none of them the caller's own) lasting at most ttl ms, and
// returns {allowed (1/0), remaining, reset ms, retry ms, granted, lease
// ms}: how many requests were counted and for how long the caller may
// admit the lease's. Time comes from the Redis server (TIME), so every
// gateway replica agrees on it whatever their clocks say.
const limiterLua = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a request at t would be refused, as sliding_window decides then,
-- of a window that started at start with count c and a previous one with p
-- (t in the next window: c is its previous one).
local function refused_at(t, start, window, limit, c, p)
  if t >= start + 2 * window then return false end
  if t >= start + window then c, p, start = 0, c, start + window end
  local weight = (window - (t - start)) / window
  if weight > 1 then weight = 1 end
  return p * weight + c + 1 > limit
end

-- How long from now until a request is admitted, of a window that started
-- at start with count c and a previous one with p, when one now would be
-- refused (p weighted + c + 1 > limit). The closed form can land a
-- millisecond early, the weighted count a rounding above the limit then
-- (150 * 0.56 is 84.00000000000001): it is checked, as a request then
-- would be.
local function window_wait(now, start, window, limit, c, p)
  local wait
  if c + 1 > limit then
    -- nothing frees up before the next window, where this window's count
    -- becomes the weighted previous one
    local into = math.ceil(window * (1 - (limit - 1) / c))
    if into < 0 then into = 0 end
    wait = start + window - now + into
  else
    wait = start + math.ceil(window * (1 - (limit - c - 1) / p)) - now
  end
  if wait < 1 then wait = 1 end
  while refused_at(now + wait, start, window, limit, c, p) do wait = wait + 1 end
  return wait
end

-- Sliding-window counter: the fixed window's count plus the previous
-- window's count weighted by how much of it still overlaps. O(1) memory.
-- The subject's fixed windows start offset ms into each period of window
-- (store.WindowOffset). A stored window that started less than a window
-- before this one (the previous one; or, after the offset changed, one
-- overlapping this) counts as the previous window: never forgotten early.
-- One that starts after now's (the clock stepped back: a failover to a
-- replica whose clock is behind; or the offset changed) stays the current
-- window, counted in full, until it ends: taken for the previous one, its
-- count would be weighted down and its own previous forgotten, admitting
-- up to a limit more. Only a window's first request
-- writes the whole hash and its expiry (the end of the next window, after
-- which this window's count no longer matters); the others add to its
-- count: a third or so of the script's time in Redis saved.
local function sliding_window(key, now, limit, window, n, ttl, offset)
  local v = redis.call('HMGET', key, 's', 'c', 'p')
  local start = now - ((now - offset) % window)
  local s, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if s and s > start then start = s end
  local first = s ~= start
  if first then
    if s and s >= start - window then p = c else p = 0 end
    c = 0
  end
  local weight = (window - (now - start)) / window
  if weight > 1 then weight = 1 end
  if p * weight + c + 1 > limit then
    local wait = window_wait(now, start, window, limit, c, p)
    return {0, 0, now + wait, wait, 0, 0}
  end
  -- a lease never goes past the limit, nor past this window: its requests
  -- are counted in this window's count
  local g = math.min(n, math.floor(limit - (p * weight + c)))
  if g < 1 then g = 1 end
  c = c + g
  if first then
    redis.call('HSET', key, 's', start, 'c', c, 'p', p)
    redis.call('PEXPIRE', key, start + 2 * window - now)
  else
    redis.call('HINCRBY', key, 'c', g)
  end
  local remaining = math.floor(limit - (p * weight + c))
  local reset = start + window
  if remaining <= 0 then
    -- the next request would be refused: its reset, not the window's end,
    -- which a client that waits for it would find still over the limit
    remaining, reset = 0, now + window_wait(now, start, window, limit, c, p)
  end
  return {1, remaining, reset, 0, g, math.min(ttl, start + window - now)}
end

-- Sliding log: one sorted-set member per admitted request. Exact. Members
-- are "<ms>-<count>", unique because the count only grows within one ms;
-- unless Redis's clock stepped back (a failover to a replica whose clock
-- is behind), where a name may come again: added NX, such a request is
-- added under another name instead, at the latest moment of its lease
-- (counted that much longer, never less), rather than counted as one with
-- the request that had the name.
-- A lease's requests beyond the caller's own (all of them, asked ahead)
-- are logged one after another across the lease: the i-th of m at now +
-- floor(i * ttl / m), the latest moment the caller may admit it
-- (store.StaggeredDeadline), so that each stays counted a full window
-- after it is admitted: leasing never lets more than the limit through in
-- any window. Their members, "<now>-<count>-<i>", are unique for the same
-- reason (and never equal a member of the earlier form
-- "<at>-<count+i>-<now>": its last part is a time). Their common prefix is
-- built once: turning numbers into strings was a third of a lease's time
-- in Redis. The log lives as long as its newest member counts.
local function sliding_log(key, now, limit, window, n, ttl, ahead)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local wait = tonumber(oldest[2]) + window - now
    if wait < 1 then wait = 1 end
    return {0, 0, now + wait, wait, 0, 0}
  end
  local g = math.max(math.min(n, limit - count), 1)
  -- the caller's own (none, asked ahead) and the lease's in one ZADD, in
  -- batches: unpack takes at most a few thousand values
  local m, members, prefix = g - 1, {now, now .. '-' .. count}, now .. '-' .. count .. '-'
  if ahead then m, members = g, {} end
  local added = 0 -- of the g requests' members
  for i = 1, m do
    members[#members + 1] = now + math.floor(i * ttl / m)
    members[#members + 1] = prefix .. i
    if #members == 1000 then
      added = added + redis.call('ZADD', key, 'NX', unpack(members))
      members = {}
    end
  end
  if #members > 0 then
    added = added + redis.call('ZADD', key, 'NX', unpack(members))
  end
  local late, j = now, 0
  if m > 0 then late = now + ttl end
  while added < g do
    j = j + 1
    added = added + redis.call('ZADD', key, 'NX', late, prefix .. 'r' .. j)
  end
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, tonumber(newest[2]) + window - now)
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {1, limit - count - g, tonumber(oldest[2]) + window, 0, g, ttl}
end

local function take(key, now, limit, window, algorithm, n, ttl, offset, ahead)
  if algorithm == 'sliding_log' then
    return sliding_log(key, now, limit, window, n, ttl, ahead == '1')
  end
  return sliding_window(key, now, limit, window, n, ttl, offset)
end
`

// checkKeyScript is the hot path: validate the key record and take one
// request from its limit, in one round trip.
//
// KEYS[1] record, KEYS[2] counter (absent: no limit)
// ARGV[1] hash hex, ARGV[2] cached revision, ARGV[3] limit, ARGV[4] window
// ms, ARGV[5] algorithm, ARGV[6] how old last-used may get before it is
// rewritten (ms), so that last-used costs one write per key per interval,
// not one per request, ARGV[7] requests to take (a lease when > 1), ARGV[8]
// how long a lease may last (ms), ARGV[9] the subject's window offset (ms),
// ARGV[10] 1 when the lease is asked ahead (store.Ask.Ahead), else 0.
//
// Returns {status, record-or-empty, allowed, remaining, reset, retry,
// granted, lease ms}; the record (HGETALL) is sent only when its revision
// differs from ARGV[2].
var checkKeyScript = newHotScript(limiterLua + `
local rec = redis.call('HMGET', KEYS[1], 'h', 'e', 'x', 'v', 'u')
if not rec[1] or rec[1] ~= ARGV[1] then
  return {1, {}}
end
local now = now_ms()
local full = {}
if rec[4] ~= ARGV[2] then full = redis.call('HGETALL', KEYS[1]) end
if rec[2] ~= '1' then return {2, full} end
local expires = tonumber(rec[3]) or 0
if expires > 0 and now >= expires then return {3, full} end
if now - (tonumber(rec[5]) or 0) >= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'u', now)
end
if #KEYS < 2 then return {0, full} end
local d = take(KEYS[2], now, tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10])
return {0, full, d[1], d[2], d[3], d[4], d[5], d[6]}
`)

// limitScript takes one request (or a lease) from a subject's limit.
// KEYS[1] counter; ARGV[1] limit, ARGV[2] window ms, ARGV[3] algorithm,
// ARGV[4] requests to take, ARGV[5] how long a lease may last (ms), ARGV[6]
// the subject's window offset (ms), ARGV[7] 1 when asked ahead, else 0.
var limitScript = newHotScript(limiterLua + `
return take(KEYS[1], now_ms(), tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
`)

// hotScript is a script of the hot path, its SHA boxed once for EVALSHA's
// arguments: converting it to an interface value per call would allocate.
type hotScript struct {
	*redis.Script
	sha any
}

func newHotScript(src string) hotScript {
	s := redis.NewScript(src)
	return hotScript{Script: s, sha: s.Hash()}
}

// hashNotFoundScript reads again a key hash that a plain GET did not find.
// Its first command writes (deletes a key never set, a no-op; KEYS[2],
// named with KEYS[1] as its hash tag, so both are in one slot), so a
// replica refuses it with READONLY (a store error: 503, or fail-open's
// rules) instead of answering from its copy: after a failover the client
// holds connections to the demoted primary until it hears of the new one,
// and a key created since is not there yet. Only hashes that match no key
// pay for it; the negative cache spares a repeated one for a second.
// KEYS[1] the hash's index entry. Returns the key id, or nil.
var hashNotFoundScript = redis.NewScript(`
redis.call('DEL', KEYS[2])
return redis.call('GET', KEYS[1])
`)

// updateScript writes a changed record if nobody changed it meanwhile.
// KEYS[1] record; ARGV[1] expected revision; ARGV[2..] field/value pairs.
// Returns 1 on success, 0 when the revision moved on, -1 when gone.
var updateScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
`)

// epochScript reads the epoch, starting it at the seed given when Redis has
// none (redisstore.go: the epoch). KEYS[1] the epoch; ARGV[1] a seed.
var epochScript = redis.NewScript(`
local e = redis.call('GET', KEYS[1])
if e then return e end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`)
