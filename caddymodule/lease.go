package keygate

import (
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// Leases (the handler's `lease` option) let a gateway admit most requests
// without a store round trip. When a subject's lease is spent, the next
// request asks the store for several requests at once (store.Check.Take):
// the store counts them against the limit right away, never past it, and
// this gateway admits them itself, for at most store.MaxLease (a minute).
// So a limit is never exceeded across any number of gateways; what leasing
// costs is precision the other way: requests leased but not used in time
// were counted anyway, and X-RateLimit-Remaining is what the store said
// when it granted the lease, less what this gateway used since.
//
// A sliding_window lease counts its requests in the current window and
// lasts to that window's end. A sliding_log lease logs its i-th request of
// n at i/n of the lease's spread, the latest moment this gateway may admit
// it (store.StaggeredDeadline), so each stays counted a full window after
// it is admitted and, on time, not much longer; one whose moment passes
// unused lapses.
//
// A key's validity is checked with every lease, and its lease is used only
// while no key has changed since (the store's epoch, epoch.go), so a
// revoked or rotated key stops working within about a quarter of a second,
// a second at worst; its expiry time is checked before every leased
// request.
//
// A lease is refilled ahead of time, in the background: the request that
// finds a third of the last grant left (refillAhead), or less than the
// recent pace uses in four times what refills have been taking
// (refillRunway, low), is admitted from it like the others and has the
// handler ask the store for the next lease (store.Ask.Ahead: none of it
// that request's own), while the requests that follow go on taking the
// rest. What refills on their way ask for counts as held: another goes
// only when that would not last either, as on a busy host, where a
// refill can take longer than a whole lease lasts (at most
// refillsOnTheWay at once). Refills ahead never take what a gateway holds,
// with what is on its way, beyond twice the configured lease or a
// hundredth of the limit, whichever is more (holdMost): what it holds was
// counted against the limit, so that bounds what a key near its limit
// loses to a gateway that stops seeing it; a lease too small for the pace
// and the store's speed shows as requests waiting for refills
// (keygate_lease_refill_waits_total). So no
// request waits for the store while a lease holds, and concurrent
// requests seldom find a lease spent. Those that do while a refill is on
// its way wait for the oldest and take from its grant, rather than each
// ask the store for a lease of its own (counted in full, used or not).
// Should the store refuse a refill, the lease is used up and they ask the
// store; should it not answer, they have its error. A sliding_window
// lease is refilled so only if what is left would not last, at the pace,
// until the lease ends: its requests end with their window, as a
// refill's would. A refill of fewer than two is not asked for ahead: the
// request that finds the lease spent asks for its own. Requests are
// admitted from the grant whose next request must be admitted soonest, so
// a refill's early deadlines (sliding_log) go first.
//
// The size of a lease follows the subject's traffic: its pace is the
// requests admitted from the last grant to now (so an idle while slows it),
// and a lease is at most twice the size of the last one asked for (a grant
// that tops up what is held does not lower that, nor one that a window's
// end cut short, sizeCutByWindow), so that a burst of a few
// requests never leases the maximum, which the limit would count whether
// or not it is used: a subject seen once in a while asks for one request
// at a time, a busy one grows to the configured maximum in a few grants.
//   - sliding_window: what the pace would use until the window running
//     ends (at most store.MaxLease's), less what the lease still holds.
//   - sliding_log: what the pace would use in half of store.MaxLease,
//     spread over twice the time the pace would take to use it (at least a
//     second, at most MaxLease), so that traffic a little slower than
//     measured still uses its requests before their moments pass.

// leaseKey names one lease: whose limit (kind 'k' with a key id, or 's'
// with an anonymous subject) under which policy. A key's lease is also the
// record revision's that the store validated when granting it (keyLease):
// after a rotation the old value's hash still finds the old record in the
// key cache, and must not admit from the lease its successor holds under
// the same id; it asks the store, which refuses it.
type leaseKey struct {
	kind     byte
	subject  string
	revision int64 // a key's record revision; 0 for an anonymous subject
	policy   store.Policy
}

// keyLease names the lease of key record k under policy.
func keyLease(k *store.Key, policy store.Policy) leaseKey {
	return leaseKey{kind: 'k', subject: k.ID, revision: k.Revision, policy: policy}
}

// lease is what this gateway holds of one subject's limit. Its only
// pointers are its two slices, first, so that the GC scans no more of it
// (it scans an object up to its last pointer); its moments are instants
// and Unix milliseconds, not time.Time, whose location is a pointer.
type lease struct {
	// grants still to admit from, oldest first: a refill ahead joins what
	// is left, as do the leases of concurrent requests that all found the
	// last one spent
	grants []grant
	// refills ahead on their way, oldest first (at most refillsOnTheWay).
	// What they ask for counts as held when take decides whether to ask
	// for another: a refill can take longer than a lease lasts.
	refills   []*refill
	epoch     int64 // the store's epoch when granted (keys only)
	remaining int64 // the store's remaining after granting (the lowest of concurrent grants)
	limit     int64
	resetMs   int64   // the store's Reset (store.Decision), in Unix ms as the stores work it out
	since     instant // when the last grant was asked for
	ends      instant // when the last of them ends
	used      int64   // requests admitted since, counting the one that asked
	size      int64   // what the last request to the store asked for
	granted   int64   // what the store granted it, that request's own included (if not asked ahead)
	spread    time.Duration
	// when a refill ahead last failed, was refused or was not worth a
	// call (0: never): the next waits refillWait, so that a store that is
	// down or a limit that is reached is not asked again for every request
	refillRefused instant
	// when a request that found the lease spent, no refill on its way,
	// asked the store for a lease (0: none on its way). Until its grant is
	// back (or askHold, if its call failed) the others that find the lease
	// so ask for their own request only: each asking for a lease would
	// hold one lease per request in flight, far past holdMost.
	asking instant
	// requests admitted from this lease ever, and when the latest
	// multiples of paceMarkEvery were (at admitted/paceMarkEvery modulo 4)
	admitted  int64
	paceMarks [4]instant
	// how long refills ahead take: the latest, or more while slower ones
	// before it decay (by an eighth a refill), so the lease is refilled
	// early enough that the refill is back before it is spent (low)
	refillTook time.Duration
}

// refill is one refill ahead of a lease, from take, which starts it, to
// refilled, which records its grant and ends it. Requests that find the
// lease spent while it is on its way wait for it and take from its grant,
// rather than each ask the store for a lease of its own: the store would
// count every one of those in full, and run them one after another behind
// the refill.
type refill struct {
	done chan struct{} // closed once the refill is back, its grant recorded
	err  error         // why the store call failed, if it did; set before done is closed
	// what it asks the store for (till wantAhead works it out, the size
	// the lease last asked for), when, and under which epoch
	ask   store.Ask
	start time.Time
	epoch int64
	// the lease's admitted when it was asked for: the requests admitted
	// while it is on its way count towards the pace from its grant on
	admittedAt int64
}

// end wakes r's waiters, with the error of its store call if it failed.
func (r *refill) end(err error) {
	r.err = err
	close(r.done)
}

// onTheWay is what l's refills on their way ask for, but skip's.
func (l *lease) onTheWay(skip *refill) (n int64) {
	for _, r := range l.refills {
		if r != skip {
			n += r.ask.Take
		}
	}
	return n
}

// refillOver takes r off l's refills on their way, back at now; refused
// (or failed, or not worth a call), it holds the next off for refillWait.
func (l *lease) refillOver(r *refill, refused bool, now instant) {
	if i := slices.Index(l.refills, r); i >= 0 {
		l.refills = slices.Delete(l.refills, i, i+1)
	}
	if refused {
		l.refillRefused = now
	}
}

// grant is one lease the store granted: tokens requests (beyond the asking
// one's, unless asked ahead) to admit within length of start.
type grant struct {
	start     instant // before the call
	length    time.Duration
	tokens    int64
	next      int64   // tokens admitted or lapsed so far
	staggered bool    // the i-th token (from 1) only until StaggeredDeadline(i, tokens, length)
	due       instant // the latest moment the next token may be admitted
}

// instant is a moment as the time since instantBase, on the monotonic
// clock when the time.Time it came from has a reading. Grants and leases
// keep their moments so rather than as time.Time, whose location pointer
// would have the GC scan every grant a gateway holds (a grant then holds
// no pointer) and more of every lease: a busy gateway holds many.
type instant time.Duration

var instantBase = time.Now()

func instantOf(t time.Time) instant { return instant(t.Sub(instantBase)) }

func (i instant) add(d time.Duration) instant { return i + instant(d) }

// sub is how long after j i is.
func (i instant) sub(j instant) time.Duration { return time.Duration(i - j) }

// newGrant is the grant of the store's decision d, asked for at start
// (ahead or not). A lease shorter than a millisecond counts as not
// staggered: in whole milliseconds, as the store works them out, its
// deadlines would all be 0.
func newGrant(start instant, d store.Decision, ahead bool) grant {
	g := grant{start: start, length: d.Lease, tokens: d.Leased(ahead), staggered: d.Staggered && d.Lease >= time.Millisecond}
	g.setDue()
	return g
}

// setDue records when g's next token may last be admitted: no token
// lapses before, so only then need the tokens' deadlines be worked out.
func (g *grant) setDue() {
	if g.staggered && g.next < g.tokens {
		g.due = g.start.add(store.StaggeredDeadline(g.next+1, g.tokens, g.length))
	} else {
		g.due = g.start.add(g.length)
	}
}

// left is how many tokens of g may still be admitted at now, counting as
// gone those that may no longer be.
func (g *grant) left(now instant) int64 {
	if now < g.due {
		return g.tokens - g.next
	}
	switch elapsed := now.sub(g.start); {
	case elapsed >= g.length:
		g.next = g.tokens
	case g.staggered: // elapsed ≥ 0: now is not before due, nor due before start
		// The i-th may be admitted while elapsed < ⌊i·ms/n⌋ ms: while
		// ⌊elapsed⌋ ms + 1 ≤ i·ms/n, i.e. from the i below on.
		ms := g.length.Milliseconds()
		first := ((elapsed.Milliseconds()+1)*g.tokens + ms - 1) / ms
		g.next = max(g.next, first-1)
	}
	g.setDue()
	return g.tokens - g.next
}

// left is how many requests of l may still be admitted. It drops the
// grants that have none left.
func (l *lease) left(now instant) (n int64) {
	live := 0
	for i := range l.grants {
		if left := l.grants[i].left(now); left > 0 {
			n += left
			if live != i {
				l.grants[live] = l.grants[i]
			}
			live++
		}
	}
	clear(l.grants[live:])
	l.grants = l.grants[:live]
	return n
}

// low says whether a lease with left requests left at now (counting
// those refills on their way ask for) is to be refilled: a third or less
// of the last grant is left, or no more than the recent pace would use in
// refillRunway times what refills have been taking. A third of a lease of
// 64 lasts 3 ms at 6,400 requests a second, less than a refill can take on
// a busy host; once the lease is spent, every request in flight waits.
// Four times, not twice: the latest refill's time is no bound on the
// next's, and at 64 connections twice still left 1–3 % of requests
// waiting in the load benchmark.
func (l *lease) low(left int64, now instant) bool {
	if left*refillAhead <= l.granted {
		return true
	}
	return float64(left) <= l.recentPace(now)*(refillRunway*l.refillTook).Seconds()
}

// recentPace is l's requests per second over the last 48 to 63 it
// admitted (paceMarks), whichever grants they came from: 0 until it has
// admitted 64. The pace since the last grant (pace) is no measure here: a
// few requests just after a grant would read as a rush, and right after a
// slow refill the grant is older than the requests it is to serve.
func (l *lease) recentPace(now instant) float64 {
	marks := int64(len(l.paceMarks))
	m := l.admitted / paceMarkEvery
	if m < marks {
		return 0
	}
	oldest := m - marks + 1
	elapsed := max(now.sub(l.paceMarks[oldest%marks]), time.Millisecond)
	return float64(l.admitted-oldest*paceMarkEvery) / elapsed.Seconds()
}

// admit admits one request from l at now (at on the wall clock), which
// has left > 0 (lapsed ones dropped), from the grant whose next token must
// be admitted soonest. Its Reset is the grant's, but never before at: a
// sliding_log lease outlives the moment its grant's oldest logged request
// dropped out of the window (the next ones drop out from about then on).
func (l *lease) admit(left int64, now instant, at time.Time) store.Decision {
	soonest := 0
	for i := 1; i < len(l.grants); i++ {
		if l.grants[i].due < l.grants[soonest].due {
			soonest = i
		}
	}
	g := &l.grants[soonest]
	if g.next++; g.staggered {
		g.setDue()
	}
	l.used++
	if l.admitted++; l.admitted%paceMarkEvery == 0 {
		l.paceMarks[l.admitted/paceMarkEvery%int64(len(l.paceMarks))] = now
	}
	return store.Decision{Allowed: true, Limit: l.limit, Remaining: l.remaining + left - 1, Reset: time.UnixMilli(max(l.resetMs, at.UnixMilli()))}
}

// leaseShards spreads leases over independently locked maps. A power of two.
const leaseShards = 32

// sweepEvery is how many grants a shard records between sweeps of leases
// that ended long ago (anonymous subjects would otherwise pile up).
const sweepEvery = 1024

// maxLeasesPerShard bounds the table (100,000 leases in all, as the key
// cache): a flood of new subjects (a client rotating through its IPv6
// /64s) would otherwise hold one each for two minutes or more. Past it, a
// shard swept and still full grants no new lease: those subjects' requests
// each make a store call, as without leases.
const maxLeasesPerShard = 100_000 / leaseShards

// Sizing and refilling (see above).
const (
	refillAhead     = 3           // refill when a third of the last grant is left
	refillWait      = time.Second // after a refill failed or was refused, before the next
	askHold         = time.Second // a request's lease asked for holds others' asks to one, at most this long (or the store's timeout)
	refillRunway    = 4           // refill when what is left lasts less than four times what refills take
	refillsOnTheWay = 4           // at most, per lease
	holdLeases      = 2           // refills ahead hold at most twice the configured lease, with what is left,
	holdShare       = 100         // or a hundredth of the limit if more
	paceMarkEvery   = 16          // admitted requests between recentPace's marks
	logHorizon      = store.MaxLease / 2
	logSlack        = 2
	logSpreadMin    = time.Second
)

type leaseTable struct {
	max       int64
	algorithm store.Algorithm
	// how long a request's lease asked for holds others' asks to one:
	// askHold, or the store's timeout if longer, since its call may take
	// that long and still bring the lease back
	askHold time.Duration
	seed    maphash.Seed
	shards  [leaseShards]leaseShard
}

type leaseShard struct {
	mu     sync.Mutex
	leases map[leaseKey]*lease
	grants int
}

func newLeaseTable(max int64, a store.Algorithm) *leaseTable {
	t := &leaseTable{max: max, algorithm: a, askHold: askHold, seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].leases = make(map[leaseKey]*lease)
	}
	return t
}

// leaseTables are a gateway's leases: one table per lease size and
// algorithm, shared by every route that uses them, in every config while
// the store lives (across reloads), as the store's counters are shared by
// every route of the same limit. So what one route leased, another route
// of the same limit admits from, its headers counting down with it, and a
// gateway's bounds on what it holds (holdMost, maxLeasesPerShard) are the
// gateway's, not each route's. (With a table per route, a key that spent
// its limit through one route's leases was refused on another route of
// the same limit while the first still held its requests.) A table goes
// when the last handler using it does (a reload that changes lease or
// algorithm), not before: a reload provisions the new config's handlers
// before it cleans up the old one's.
type leaseTables struct {
	mu     sync.Mutex
	tables map[leaseTableID]*usedTable
}

type usedTable struct {
	*leaseTable
	users int // handlers using it (get, release)
}

type leaseTableID struct {
	max       int64
	algorithm store.Algorithm
}

// get returns the table of leases of at most most under a, made on first
// use, for a store whose calls take up to timeout.
func (ts *leaseTables) get(most int64, a store.Algorithm, timeout time.Duration) *leaseTable {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	id := leaseTableID{most, a}
	t := ts.tables[id]
	if t == nil {
		if ts.tables == nil {
			ts.tables = make(map[leaseTableID]*usedTable)
		}
		t = &usedTable{leaseTable: newLeaseTable(most, a)}
		t.askHold = max(askHold, timeout)
		ts.tables[id] = t
	}
	t.users++
	return t.leaseTable
}

// release lets go of a table get returned: the last user's release drops it.
func (ts *leaseTables) release(most int64, a store.Algorithm) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	id := leaseTableID{most, a}
	if t := ts.tables[id]; t != nil {
		if t.users--; t.users <= 0 {
			delete(ts.tables, id)
		}
	}
}

func (t *leaseTable) shard(k leaseKey) *leaseShard {
	return &t.shards[maphash.String(t.seed, k.subject)&(leaseShards-1)]
}

// take admits one request from k's lease, if it has one left. A key's
// lease also needs the store's epoch unchanged since the grant and freshly
// confirmed (epoch.go).
//
// Admitted (ok) with a refill, the caller is to refill the lease ahead of
// time: ask the store for the next lease in the background (wantAhead,
// then refilled). Not admitted, the request asks the store (want, put);
// unless take gives it the oldest refill on its way, which it may wait for
// (refill.done) and take again.
//
// What refills on their way ask for counts as held, so that another goes
// only when that would not last either (on a busy host a refill can take
// longer than a whole lease lasts), and only while what is held and on
// its way leaves room within holdMost for one more lease of the size last
// asked for.
func (t *leaseTable) take(k leaseKey, at time.Time, epoch int64, fresh bool) (d store.Decision, ok bool, r *refill) {
	now := instantOf(at)
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.leases[k]
	if l == nil || k.kind == 'k' && (!fresh || l.epoch != epoch) {
		return store.Decision{}, false, nil
	}
	left := l.left(now)
	if left == 0 {
		if len(l.refills) == 0 {
			return store.Decision{}, false, nil
		}
		return store.Decision{}, false, l.refills[0]
	}
	coming := left + l.onTheWay(nil)
	if len(l.refills) < refillsOnTheWay && coming+l.size <= t.holdMost(k.policy) && l.low(coming, now) &&
		(l.refillRefused == 0 || now.sub(l.refillRefused) >= refillWait) && !t.lastsToItsEnd(l, coming, now) {
		r = &refill{done: make(chan struct{}), ask: store.Ask{Take: l.size}, admittedAt: l.admitted}
		l.refills = append(l.refills, r)
	}
	return l.admit(left, now, at), true, r
}

// refilled records what the store decided for k's refill r (back by now),
// or that its store call failed with err, and ends r: its waiters take
// again. One refused or failed holds the next off for refillWait.
func (t *leaseTable) refilled(k leaseKey, r *refill, d store.Decision, now time.Time, err error) {
	sh := t.shard(k)
	sh.mu.Lock()
	if l := sh.leases[k]; l != nil {
		l.refillOver(r, err != nil || !d.Allowed, instantOf(now))
	}
	if err == nil {
		t.record(sh, k, d, r.ask, r.start, r.epoch, now, r)
	}
	sh.mu.Unlock()
	r.end(err)
}

// drop forgets k's lease: its key is no longer valid.
func (t *leaseTable) drop(k leaseKey) {
	sh := t.shard(k)
	sh.mu.Lock()
	delete(sh.leases, k)
	sh.mu.Unlock()
}

// lastsToItsEnd says whether a sliding_window lease's left requests last,
// at the pace since the last grant, until the lease ends. They all end
// together, with their window (or store.MaxLease after the grant), so a
// refill is not needed before then; one asked for anyway would end with
// that window too, and its requests unused.
func (t *leaseTable) lastsToItsEnd(l *lease, left int64, now instant) bool {
	return t.algorithm == store.SlidingWindow && float64(left) >= l.pace(now, false)*l.ends.sub(now).Seconds()
}

// want is how many requests to ask the store for on k's behalf, under the
// store's epoch given (see put), and over what spread (sliding_log).
//
// One request at a time asks for a lease (lease.asking): while its grant is
// on its way, the others that find the lease spent ask for one request.
func (t *leaseTable) want(k leaseKey, now time.Time, epoch int64) store.Ask {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.leases[k]
	if l != nil && l.asking != 0 && instantOf(now).sub(l.asking) < t.askHold {
		return store.Ask{Take: 1}
	}
	ask := t.ask(l, k, now, epoch, nil)
	if l != nil && ask.Take >= 2 {
		l.asking = instantOf(now)
	}
	return ask
}

// wantAhead is want for the refill r that take started, which it records
// in r (asked at now, under the store's epoch given), and whether it is
// worth a call: a lease of one is not (see above), and r is then over,
// holding the next off as a refused one does (refillWait).
func (t *leaseTable) wantAhead(k leaseKey, r *refill, now time.Time, epoch int64) (store.Ask, bool) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.leases[k]
	ask := t.ask(l, k, now, epoch, r)
	ask.Ahead = true
	r.ask, r.start, r.epoch = ask, now, epoch
	if ask.Take >= 2 {
		return ask, true
	}
	if l != nil {
		l.refillOver(r, true, instantOf(now))
	}
	return ask, false
}

// ask is want's answer for l (nil if there is none yet), shard locked;
// for the refill ahead (non-nil), for one whose asking request was
// admitted from the lease already. It asks for what a request that asks
// the store itself would: the lease, and the pace (see pace), as they were
// before that request, which such a request takes from its own grant.
// Other refills on their way count as held, and a refill ahead asks for no
// more than leaves what is held and on its way within holdMost.
func (t *leaseTable) ask(l *lease, k leaseKey, at time.Time, epoch int64, ahead *refill) store.Ask {
	if l == nil || l.epoch != epoch {
		// Held under an epoch since changed (a key changed), the lease is
		// of no use, and starts over as a new one: at one, doubling. At
		// its last size every request that found it unusable (all that
		// come in while the first grant is on its way) would ask for a
		// full lease, to be counted and mostly lapse.
		return store.Ask{Take: 1}
	}
	now := instantOf(at)
	left := l.left(now) + l.onTheWay(ahead)
	most := min(2*l.size, t.max) // a lease grows by doubling, to the configured maximum
	if ahead != nil {
		most = min(most, t.holdMost(k.policy)-left)
		left++
	}
	switch {
	case now < l.ends && !l.low(left, now):
		// concurrent requests found this lease spent: it is not, by now
		return store.Ask{Take: max(min(l.size, most), 1), Spread: l.spread}
	case t.algorithm == store.SlidingLog:
		perSecond := l.pace(now, ahead != nil)
		n := fit(perSecond*logHorizon.Seconds(), most)
		if n < 2 {
			return store.Ask{Take: 1}
		}
		spread := time.Duration(logSlack * float64(n) / perSecond * float64(time.Second))
		return store.Ask{Take: n, Spread: min(max(spread, logSpreadMin), store.MaxLease)}
	default:
		// What the lease holds is used first and ends no later than the
		// new grant would: ask for what the pace would use beyond it.
		horizon := min(untilWindowEnd(time.UnixMilli(l.resetMs), k.policy.Window, at), store.MaxLease)
		return store.Ask{Take: fit(l.pace(now, ahead != nil)*horizon.Seconds()-float64(left), most)}
	}
}

// pace is l's subject's requests per second from the grant to now: those
// admitted at or after it, before now. A request that has a refill asked
// ahead was admitted already; it is not counted here (ahead), but as the
// refill's first, as a request that asks the store itself is counted as
// its grant's.
func (l *lease) pace(now instant, ahead bool) float64 {
	used := l.used
	if ahead {
		used--
	}
	return float64(max(used, 0)) / max(now.sub(l.since), time.Millisecond).Seconds()
}

// fit rounds up a lease size worked out in floating point and holds it to
// at least one and at most most.
func fit(n float64, most int64) int64 {
	return max(int64(min(math.Ceil(n), float64(most))), 1)
}

// sizeCutByWindow is the size a sliding_window lease that starts over (what
// it held spent or ended) keeps, of size before, when the store granted it
// took requests for length: those the window's end left room for. Near
// that end the ask is small because the window is short, not because the
// key slowed down; recorded as the lease's size, it would have the next
// window's first lease start again from twice that, and a key seen a few
// times a minute would make several store calls a window growing it back.
// So the size stays as it was, up to what took would come to at the same
// pace over the longest a lease of window lasts (a window, at most
// store.MaxLease). A key that did slow down asks for less over that too,
// and its size falls to that. 0 (keeps nothing) under sliding_log, whose
// leases do not end with a window.
func (t *leaseTable) sizeCutByWindow(size, took int64, length, window time.Duration) int64 {
	longest := min(window, store.MaxLease)
	if t.algorithm != store.SlidingWindow || length <= 0 || length >= longest {
		return 0
	}
	overLongest := float64(took) * float64(longest) / float64(length)
	return int64(min(float64(size), overLongest))
}

// holdMost is the most a gateway holds of policy's limit with the refills
// it asks ahead for, what is left and what they ask for: twice the
// configured lease, or a hundredth of the limit if more. Beyond a lease,
// what is held buys only fewer waits for refills; a key near its limit
// pays for it, a key far from it hardly.
func (t *leaseTable) holdMost(policy store.Policy) int64 {
	return max(holdLeases*t.max, policy.Limit/holdShare)
}

// untilWindowEnd is how long from now the sliding window running at now
// lasts, given that one of the subject's windows ended (or ends) at end.
func untilWindowEnd(end time.Time, window time.Duration, now time.Time) time.Duration {
	if end.After(now) || window <= 0 {
		return end.Sub(now)
	}
	return window - now.Sub(end)%window
}

// put records what the store decided for k (asked for at start, when the
// epoch was the one given; it answered by now) and returns the decision
// for the request that asked, counting the rest of the lease as
// remaining: they are this caller's to use. When the store refused, the
// request still takes one from what this gateway holds, if anything: a
// concurrent request's lease came back meanwhile, counted already. A
// refill asked ahead (refilled) had no request of its own waiting: what
// the store decided only changes the lease. A grant asked under another
// epoch than one asked after it is not kept: the later has the store's
// newer word.
func (t *leaseTable) put(k leaseKey, d store.Decision, ask store.Ask, start time.Time, epoch int64, now time.Time) store.Decision {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return t.record(sh, k, d, ask, start, epoch, now, nil)
}

// record is put's work (asked and at are put's start and now), shard sh
// locked; ahead is the refill the store decided for, if it was one (ask
// is then its ask, asked ahead: no request of its own).
func (t *leaseTable) record(sh *leaseShard, k leaseKey, d store.Decision, ask store.Ask, asked time.Time, epoch int64, at time.Time, ahead *refill) store.Decision {
	start, now := instantOf(asked), instantOf(at)
	l := sh.leases[k]
	asking := l != nil && l.asking != 0
	if asking && ahead == nil && ask.Take >= 2 {
		l.asking, asking = 0, false // the lease asked for (want) is back
	}
	if !d.Allowed {
		if l == nil || l.epoch != epoch {
			return d
		}
		l.remaining = 0 // nothing beyond what leases hold, the store says
		l.resetMs = max(l.resetMs, d.Reset.UnixMilli())
		if left := l.left(now); left > 0 && ahead == nil {
			return l.admit(left, now, at)
		}
		return d
	}
	if l == nil {
		if len(sh.leases) >= maxLeasesPerShard {
			sh.granted(start) // full: the sweeps make room
			if len(sh.leases) >= maxLeasesPerShard {
				return d // the store's decision for this request alone
			}
		}
		l = &lease{}
		sh.leases[k] = l
	}
	if ahead != nil {
		took := now.sub(start)
		l.refillTook = max(took, l.refillTook-l.refillTook/8+took/8)
	}
	if l.epoch != epoch && start < l.since {
		// Asked under another epoch than a grant asked after it, which
		// replaced what was held: a key changed in between, and the later
		// grant has the store's newer word. This one would replace it, to
		// go unused under an epoch no longer current.
		return d
	}
	if d.Leased(ahead != nil) > 0 && start > l.refillRefused {
		// the store, asked since, granted a lease: it is up and the limit
		// has room, which is what the wait after a refusal waits for (a
		// refill not worth a call at the end of the last window would
		// otherwise hold the new window's first refill ahead back)
		l.refillRefused = 0
	}
	g := newGrant(start, d, ahead != nil)
	ends := start.add(d.Lease)
	overtaken := false
	switch {
	case l.epoch != epoch || l.left(start) == 0:
		size := max(ask.Take, 1)
		if l.epoch == epoch {
			size = max(size, t.sizeCutByWindow(l.size, ask.Take, d.Lease, k.policy.Window))
		}
		if asking && l.epoch == epoch {
			// asked for one while another request's lease is on its way:
			// not the size that lease's successor may double
			size = max(size, l.size)
		}
		l.grants = append(l.grants[:0], g)
		l.ends, l.remaining, l.epoch, l.size = ends, d.Remaining, epoch, size
	case start < l.since:
		// Asked before the grant last recorded, back after it (a refill
		// ahead overtaken by a request that found the lease spent, or one
		// of several concurrent requests' leases): it adds its requests
		// and may lower what remains; the pace and sizes stay the later
		// grant's.
		l.grants = append(l.grants, g)
		l.ends, l.remaining = max(l.ends, ends), min(l.remaining, d.Remaining)
		overtaken = true
	case ahead != nil:
		// The store counted every earlier grant before this one.
		l.grants = append(l.grants, g)
		l.ends, l.remaining = max(l.ends, ends), d.Remaining
	default:
		// Concurrent requests brought several leases: keep them all, each
		// with its own deadlines, with the lowest remaining. One that
		// brought none (a request that asked for itself alone while
		// another's lease was on its way) leaves the pace and sizes to the
		// lease it joins, as an overtaken one does: taken over, they would
		// be a grant of one's, a third of which is never left to refill at.
		l.grants = append(l.grants, g)
		l.ends, l.remaining = max(l.ends, ends), min(l.remaining, d.Remaining)
		overtaken = d.Leased(false) == 0
	}
	if !overtaken {
		// A grant joining what is held may top it up with a few: that does
		// not lower the size the next lease may double.
		l.size = max(l.size, ask.Take)
		used := int64(1)
		if ahead != nil {
			// the request that had it asked for, and those since
			used = max(l.admitted-ahead.admittedAt, 1)
		}
		l.since, l.used = start, used
		l.limit, l.resetMs, l.granted, l.spread = d.Limit, d.Reset.UnixMilli(), d.Granted, ask.Spread
	}
	if d.Remaining == 0 && l.remaining == 0 {
		// the limit reached: the reset is when the store admits a request
		// again, as this grant says (not the end of the window another
		// grant, overtaken or concurrent, reported with room left)
		l.resetMs = max(l.resetMs, d.Reset.UnixMilli())
	}
	d.Remaining = l.remaining + l.left(start)
	sh.granted(start)
	return d
}

// granted counts a grant recorded in sh at now; every sweepEvery grants it
// forgets the leases that ended over a minute before.
func (sh *leaseShard) granted(now instant) {
	if sh.grants++; sh.grants < sweepEvery {
		return
	}
	sh.grants = 0
	old := now.add(-time.Minute)
	for k, l := range sh.leases {
		if l.ends < old {
			delete(sh.leases, k)
		}
	}
}
