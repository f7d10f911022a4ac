package keygate

import (
	"context"
	"time"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
)

// A lease is refilled ahead of time off the request path (lease.go): the
// request that finds it low is admitted from it at once, and a goroutine
// asks the store for the next lease: one at a time per lease
// (lease.refilling), the next only once this one is back with a grant (a
// grant that requests finding the lease spent asked for meanwhile does
// not count) or a second has passed, each bounded by the app's timeout.
// A refill that fails changes nothing: the lease is used up, and the
// request that finds it spent asks the store itself, as without leases.

// refillKeyAhead refills a key's lease, validating the key with it as
// every store call on a key does. A changed record goes into the key
// cache; a key no longer valid loses its lease, so that its next request
// asks the store and is refused.
func (h *Handler) refillKeyAhead(lk leaseKey, entry *cachedKey, hash apikey.Hash, revision int64) {
	epoch, _ := h.app.shared.epochs.current(time.Now()) // read before the grant
	h.refillAhead(lk, epoch, func(ctx context.Context, start time.Time, ask store.Ask) (store.Decision, bool) {
		verdict, err := h.checkKey(ctx, start, lk.subject, hash, revision, lk.policy, ask)
		if err != nil {
			return store.Decision{}, false
		}
		if verdict.Fresh != nil {
			entry.record.Store(newIdentity(verdict.Fresh))
		}
		if verdict.Status != store.KeyValid {
			h.leases.drop(lk)
			return store.Decision{}, false
		}
		entry.validatedAt.Store(start.UnixNano())
		return verdict.Limit, true
	})
}

// refillAnonymousAhead refills an anonymous subject's lease.
func (h *Handler) refillAnonymousAhead(lk leaseKey) {
	h.refillAhead(lk, 0, func(ctx context.Context, start time.Time, ask store.Ask) (store.Decision, bool) {
		d, err := h.limitSubject(ctx, start, lk.subject, ask)
		return d, err == nil
	})
}

// refillAhead asks the store, through call (given when it began), for the
// lease lk wants next under the store's epoch given, and adds what it
// grants to the lease.
func (h *Handler) refillAhead(lk leaseKey, epoch int64, call func(context.Context, time.Time, store.Ask) (store.Decision, bool)) {
	start := time.Now()
	ask, worth := h.leases.wantAhead(lk, start, epoch)
	if !worth {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.app.Timeout))
	defer cancel()
	if d, ok := call(ctx, start, ask); ok {
		h.leases.put(lk, d, ask, start, epoch, time.Now())
		h.app.metrics.refilled(d)
	}
}
