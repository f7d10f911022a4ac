package keygate

import (
	"hash/maphash"
	"math"
	"sync"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// Leases (the handler's `lease` option) let a gateway admit most requests
// without a store round trip. When a subject's lease is spent, the next
// request asks the store for several requests at once (store.Check.Take):
// the store counts them against the limit right away, never past it, and
// this gateway admits them itself within store.MaxLease: 10s for a sliding
// log (whose leased requests are logged at the lease's end), the rest of
// the window for a sliding window (counted in it), at most a minute. So a
// limit is never exceeded across any number of gateways; what leasing
// costs is precision the other way: requests leased but not used before
// the lease ends were counted anyway, and X-RateLimit-Remaining is what the
// store said when it granted the lease, less what this gateway used since.
//
// A key's validity is checked with every lease, and its lease is used only
// while no key has changed since (the store's epoch, epoch.go), so a
// revoked or rotated key stops working within about a quarter of a second,
// a second at worst; its expiry time is checked before every leased
// request.
//
// The size of a lease follows the subject's traffic: when one is used up
// before it ends, the next is what the traffic since the grant would use
// until it would have ended (at least 5s), at least twice the last (up to
// the configured maximum); when one ends unused, the next is what was used.
// A key seen once in a while asks for one request at a time, a busy one
// for the maximum.

// leaseKey names one lease: whose limit (kind 'k' with a key id, or 's'
// with an anonymous subject) under which policy.
type leaseKey struct {
	kind    byte
	subject string
	policy  store.Policy
}

type lease struct {
	epoch     int64 // the store's epoch when granted (keys only)
	left      int64 // requests still to admit
	used      int64 // requests admitted from it so far
	remaining int64 // the store's remaining after it granted the lease
	limit     int64
	reset     time.Time
	granted   int64 // unix ns, local clock
	ends      int64 // unix ns, local clock
	size      int64 // what the last request to the store asked for
}

// leaseShards spreads leases over independently locked maps. A power of two.
const leaseShards = 32

// sweepEvery is how many grants a shard records between sweeps of leases
// that ended long ago (anonymous subjects would otherwise pile up).
const sweepEvery = 1024

type leaseTable struct {
	max    int64
	seed   maphash.Seed
	shards [leaseShards]leaseShard
}

type leaseShard struct {
	mu     sync.Mutex
	leases map[leaseKey]*lease
	grants int
}

func newLeaseTable(max int64) *leaseTable {
	t := &leaseTable{max: max, seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].leases = make(map[leaseKey]*lease)
	}
	return t
}

func (t *leaseTable) shard(k leaseKey) *leaseShard {
	return &t.shards[maphash.String(t.seed, k.subject)&(leaseShards-1)]
}

// take admits one request from k's lease, if it has one left. A key's
// lease also needs the store's epoch unchanged since the grant and freshly
// confirmed (epoch.go).
func (t *leaseTable) take(k leaseKey, now time.Time, epoch int64, fresh bool) (store.Decision, bool) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.leases[k]
	if l == nil || l.left == 0 || now.UnixNano() >= l.ends {
		return store.Decision{}, false
	}
	if k.kind == 'k' && (!fresh || l.epoch != epoch) {
		return store.Decision{}, false
	}
	l.left--
	l.used++
	return store.Decision{Allowed: true, Limit: l.limit, Remaining: l.remaining + l.left, Reset: l.reset, Granted: 1}, true
}

// want is how many requests to ask the store for on k's behalf.
func (t *leaseTable) want(k leaseKey, now time.Time) int64 {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.leases[k]
	switch {
	case l == nil:
		return 1
	case l.left == 0 && now.UnixNano() < l.ends:
		// Used up before it ended: ask for what the traffic seen since
		// the grant would use until that lease would have ended (a sliding
		// window's next lease ends then too) or in half a sliding log's
		// lease, whichever is longer, and at least twice as many as last
		// time.
		elapsed := max(now.UnixNano()-l.granted, int64(time.Millisecond))
		horizon := max(l.ends-now.UnixNano(), int64(store.LeaseTTL/2))
		perLease := math.Ceil(float64(l.used+1) / float64(elapsed) * float64(horizon))
		return min(max(int64(min(perLease, float64(t.max))), 2*l.size, 2), t.max)
	case now.UnixNano() >= l.ends:
		// it ended: about as many as were used during one
		return min(max(l.used, 1), t.max)
	}
	return l.size
}

// put records what the store granted for k (asked for at start, when the
// epoch was the one given) and returns the decision for the request that
// asked, counting the rest of the lease as remaining: they are this
// caller's to use.
func (t *leaseTable) put(k leaseKey, d store.Decision, asked int64, start time.Time, epoch int64) store.Decision {
	if !d.Allowed {
		return d
	}
	extra := max(d.Granted-1, 0)
	ends := start.Add(d.Lease).UnixNano()
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.leases[k]
	if l == nil {
		l = &lease{}
		sh.leases[k] = l
	}
	if l.left > 0 && start.UnixNano() < l.ends && l.epoch == epoch {
		// Concurrent requests brought two leases: keep both, until the
		// earlier end (safe for both), with the lower remaining.
		l.left += extra
		l.ends = min(l.ends, ends)
		l.remaining = min(l.remaining, d.Remaining)
		l.used++
	} else {
		l.left, l.used, l.remaining, l.ends, l.epoch = extra, 1, d.Remaining, ends, epoch
		l.granted = start.UnixNano()
	}
	l.limit, l.reset, l.size = d.Limit, d.Reset, max(asked, 1)
	d.Remaining = l.remaining + l.left

	if sh.grants++; sh.grants >= sweepEvery {
		sh.grants = 0
		old := start.Add(-time.Minute).UnixNano()
		for k, l := range sh.leases {
			if l.ends < old {
				delete(sh.leases, k)
			}
		}
	}
	return d
}
