package keygate

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

// Leases (the handler's `lease` option) let a gateway admit most requests
// without a store round trip. When a subject's lease is spent, the next
// request asks the store for several requests at once (store.Check.Take):
// the store counts them against the limit right away, never past it, and
// this gateway admits them itself within store.LeaseTTL. So a limit is
// never exceeded across any number of gateways; what leasing costs is
// precision the other way: requests leased but not used before the lease
// ends were counted anyway, and X-RateLimit-Remaining is what the store
// said when it granted the lease, less what this gateway used since.
//
// A key's validity is checked with every lease, so a revoked or rotated
// key stops working within store.LeaseTTL; its expiry time is checked
// before every leased request.
//
// The size of a lease follows the subject's traffic: it doubles each time
// a lease is used up before it ends (up to the configured maximum) and
// falls back to what was used when one ends unused, so a quiet key asks
// for one request at a time and wastes nothing.

// leaseKey names one lease: whose limit (kind 'k' with a key id, or 's'
// with an anonymous subject) under which policy.
type leaseKey struct {
	kind    byte
	subject string
	policy  store.Policy
}

type lease struct {
	left      int64 // requests still to admit
	used      int64 // requests admitted from it so far
	remaining int64 // the store's remaining after it granted the lease
	limit     int64
	reset     time.Time
	ends      int64 // unix ns, local clock
	size      int64 // what the next request to the store asks for
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

// take admits one request from k's lease, if it has one left.
func (t *leaseTable) take(k leaseKey, now time.Time) (store.Decision, bool) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	l := sh.leases[k]
	if l == nil || l.left == 0 || now.UnixNano() >= l.ends {
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
		// used up before it ended: the traffic wants a larger one
		return min(max(2*l.size, 2), t.max)
	case now.UnixNano() >= l.ends:
		// it ended: about as many as were used during one
		return min(max(l.used, 1), t.max)
	}
	return l.size
}

// put records what the store granted for k (asked for at start) and
// returns the decision for the request that asked, counting the rest of
// the lease as remaining: they are this caller's to use.
func (t *leaseTable) put(k leaseKey, d store.Decision, asked int64, start time.Time) store.Decision {
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
	if l.left > 0 && start.UnixNano() < l.ends {
		// Concurrent requests brought two leases: keep both, until the
		// earlier end (safe for both), with the lower remaining.
		l.left += extra
		l.ends = min(l.ends, ends)
		l.remaining = min(l.remaining, d.Remaining)
		l.used++
	} else {
		l.left, l.used, l.remaining, l.ends = extra, 1, d.Remaining, ends
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
