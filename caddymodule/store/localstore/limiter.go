package localstore

import (
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// The limiter reproduces the Lua in redisstore/scripts.go operation for
// operation, in milliseconds and with the same float arithmetic, so that a
// gateway answers with the same headers whichever store it runs on.

// shardCount spreads counters over independently locked maps, so requests
// for different subjects rarely wait for each other. A power of two.
const shardCount = 64

// maxCountersPerShard bounds the anonymous subjects' counters (262,144 in
// all, about 60 MB): a client rotating through its IPv6 /64s makes one
// each, kept two windows (two hours under anonymous 20 1h). A shard that
// has as many makes room for a new one (makeRoom); keys' counters, as many
// as there are keys and limits, are never dropped for it.
const maxCountersPerShard = 1 << 18 / shardCount

// counterKey names one counter the way the Redis store's key names do:
// by whose counter it is (a key id or an anonymous subject) and by the
// policy and algorithm that count into it. Changing a key's limit therefore
// starts a new counter, as it does on Redis.
type counterKey struct {
	kind      byte // 'k': a key id, 's': an anonymous subject
	name      string
	algorithm store.Algorithm
	limit     int64
	window    int64 // ms
	zone      string
}

// counter is the state of one counter. Only the fields of its algorithm
// are used; one type for both keeps the hot path free of interface calls.
type counter struct {
	// last is when the counter last admitted a request (ms). Redis expires
	// a counter some time after its last write; the janitor does the same.
	last int64

	// sliding window: the start of the current fixed window and the counts
	// of it and of the window before; windows start offset ms into each
	// period (store.WindowOffset)
	start, cur, prev, offset int64

	// sliding log: admission times, oldest first, as a ring buffer of
	// len(log) slots holding n times from head on
	log     []int64
	head, n int
}

type shard struct {
	mu       sync.Mutex
	counters map[counterKey]*counter
}

type limiter struct {
	seed   maphash.Seed
	shards [shardCount]shard
}

func newLimiter() *limiter {
	l := &limiter{seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].counters = make(map[counterKey]*counter)
	}
	return l
}

func (l *limiter) shard(ck counterKey) *shard {
	return &l.shards[maphash.String(l.seed, ck.name)&(shardCount-1)]
}

// take takes one request from the counter ck at time now (unix ms).
func (l *limiter) take(ck counterKey, now int64) store.Decision {
	sh := l.shard(ck)
	sh.mu.Lock()
	c := sh.counters[ck]
	if c == nil {
		if ck.kind == 's' && len(sh.counters) >= maxCountersPerShard {
			sh.makeRoom(now)
		}
		c = &counter{last: now}
		if ck.algorithm != store.SlidingLog {
			c.offset = store.WindowOffset(ck.kind, ck.name, time.Duration(ck.window)*time.Millisecond).Milliseconds()
		}
		sh.counters[ck] = c
	}
	var allowed bool
	var remaining, reset, retry int64
	if ck.algorithm == store.SlidingLog {
		allowed, remaining, reset, retry = c.slidingLog(now, ck.limit, ck.window)
	} else {
		// like the Lua, anything that is not sliding_log is a sliding window
		allowed, remaining, reset, retry = c.slidingWindow(now, ck.limit, ck.window)
	}
	sh.mu.Unlock()
	var granted int64
	if allowed {
		granted = 1
	}
	return store.Decision{
		Allowed:    allowed,
		Limit:      ck.limit,
		Remaining:  remaining,
		Reset:      time.UnixMilli(reset),
		RetryAfter: time.Duration(retry) * time.Millisecond,
		Granted:    granted,
	}
}

// slidingWindow is sliding_window from scripts.go. As there, a denied
// request leaves the stored state alone; the explicit float64 conversions
// keep the compiler from fusing multiply-adds, so every rounding matches
// Lua's doubles.
func (c *counter) slidingWindow(now, limit, window int64) (allowed bool, remaining, reset, retry int64) {
	start := store.WindowStart(now, c.offset, window)
	s, cur, prev := c.start, c.cur, c.prev
	if s > start {
		start = s // the clock stepped back: the stored window stays current
	}
	if s != start {
		if s != 0 && s >= start-window {
			prev = cur
		} else {
			prev = 0
		}
		cur = 0
	}
	w, l, p, n := float64(window), float64(limit), float64(prev), float64(cur)
	weight := min(float64(window-(now-start))/w, 1)
	if float64(p*weight)+n+1 > l {
		wait := windowWait(now, start, window, limit, cur, prev)
		return false, 0, now + wait, wait
	}
	cur++
	c.start, c.cur, c.prev, c.last = start, cur, prev, now
	remaining = int64(math.Floor(l - (float64(p*weight) + float64(cur))))
	if remaining <= 0 {
		// the next request would be refused: its reset, not the window's
		// end, which a client that waits for it would find still over the
		// limit
		return true, 0, now + windowWait(now, start, window, limit, cur, prev), 0
	}
	return true, remaining, start + window, 0
}

// windowWait is window_wait from scripts.go: how long from now until a
// request is admitted, of a window that started at start with count cur
// and a previous one with prev, when one now would be refused; checked
// against refusedAt.
func windowWait(now, start, window, limit, cur, prev int64) int64 {
	w, l, p, n := float64(window), float64(limit), float64(prev), float64(cur)
	var wait int64
	if cur+1 > limit {
		// nothing frees up before the next window, where this window's
		// count becomes the weighted previous one
		into := math.Ceil(float64(w * (1 - (l-1)/n)))
		if into < 0 {
			into = 0
		}
		wait = start + window - now + int64(into)
	} else {
		wait = start + int64(math.Ceil(float64(w*(1-(l-n-1)/p)))) - now
	}
	wait = max(wait, 1)
	// the closed form can land a millisecond early (150 * 0.56 is
	// 84.00000000000001): checked, as a request then would be
	for refusedAt(now+wait, start, window, limit, cur, prev) {
		wait++
	}
	return wait
}

// refusedAt is refused_at from scripts.go: whether a request at t would be
// refused, of a window that started at start with count cur and a
// previous one with prev (t in the next window: cur is its previous one).
func refusedAt(t, start, window, limit, cur, prev int64) bool {
	if t >= start+2*window {
		return false
	}
	if t >= start+window {
		cur, prev, start = 0, cur, start+window
	}
	w, l, p, n := float64(window), float64(limit), float64(prev), float64(cur)
	weight := min(float64(window-(t-start))/w, 1)
	return float64(p*weight)+n+1 > l
}

// slidingLog is sliding_log from scripts.go: exact, one time per admitted
// request, none older than the window.
func (c *counter) slidingLog(now, limit, window int64) (allowed bool, remaining, reset, retry int64) {
	for c.n > 0 && c.log[c.head] <= now-window {
		c.head = (c.head + 1) % len(c.log)
		c.n--
	}
	if int64(c.n) >= limit {
		wait := c.log[c.head] + window - now
		if wait < 1 {
			wait = 1
		}
		return false, 0, now + wait, wait
	}
	n := int64(c.n)
	// Redis keeps the log sorted whatever the clock does; a ring stays
	// sorted only if times never go back, so after a backward clock step
	// the time recorded is the newest one already there. The request then
	// counts a little longer than on Redis: never more admitted, only less.
	at := now
	if c.n > 0 {
		at = max(at, c.log[(c.head+c.n-1)%len(c.log)])
	}
	c.push(at, limit)
	c.last = at
	return true, limit - n - 1, c.log[c.head] + window, 0
}

// push appends t to the log, growing it on demand (never past limit slots:
// a log never holds more than limit times, and a huge limit must not cost
// its full size up front).
func (c *counter) push(t, limit int64) {
	if c.n == len(c.log) {
		size := int64(max(8, 2*len(c.log)))
		if size > limit {
			size = limit
		}
		grown := make([]int64, size)
		for i := range c.n {
			grown[i] = c.log[(c.head+i)%len(c.log)]
		}
		c.log, c.head = grown, 0
	}
	c.log[(c.head+c.n)%len(c.log)] = t
	c.n++
}

// forgotten says whether counter c of ck has admitted nothing for longer
// than two windows at now. Such a counter's next answer is the same as a
// new counter's (both algorithms forget everything older than that), so
// dropping it bounds memory without changing a single decision.
func (c *counter) forgotten(ck counterKey, now int64) bool { return now-c.last > 2*ck.window }

// sweep drops the counters that are forgotten.
func (l *limiter) sweep(now int64) (dropped int) {
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for ck, c := range sh.counters {
			if c.forgotten(ck, now) {
				delete(sh.counters, ck)
				dropped++
			}
		}
		sh.mu.Unlock()
	}
	return dropped
}

// makeRoom drops, from a full shard, the counters that no longer matter
// (as sweep does) and, if that leaves it over seven eighths full, the
// anonymous subjects' counters that admitted a request least recently,
// down to seven eighths: an eighth at a time, so that a flood of new
// subjects pays for one scan every few hundred of them. A subject dropped
// so is counted afresh, as Redis does with a key its maxmemory policy
// evicts; keys' counters stay.
func (sh *shard) makeRoom(now int64) {
	var lasts []int64
	for ck, c := range sh.counters {
		switch {
		case c.forgotten(ck, now):
			delete(sh.counters, ck)
		case ck.kind == 's':
			lasts = append(lasts, c.last)
		}
	}
	excess := len(sh.counters) - maxCountersPerShard*7/8
	if excess <= 0 || len(lasts) == 0 {
		return
	}
	slices.Sort(lasts)
	cut := lasts[min(excess, len(lasts))-1]
	for ck, c := range sh.counters {
		if ck.kind == 's' && c.last <= cut {
			delete(sh.counters, ck)
		}
	}
}

// size reports how many counters are kept (for tests).
func (l *limiter) size() (n int) {
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.counters)
		sh.mu.Unlock()
	}
	return n
}
