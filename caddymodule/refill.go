package keygate

import (
	"context"
	"time"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
)

// A lease is refilled ahead of time off the request path (lease.go): the
// request that finds it low is admitted from it at once, and a goroutine
// asks the store for the next lease, bounded by the app's timeout. What
// refills on their way ask for counts as held (lease.refills), so another
// goes only when that would not last either. Requests that find the lease
// spent while a refill is on its way wait for the oldest (awaitRefill)
// and take from its grant. A refill that is refused, or finds the key no
// longer valid, changes nothing: the lease is used up, and those requests
// ask the store themselves, as without leases. One that fails gives them
// its error, as their own store call would have: the store did not answer
// in time. Either holds the next refill off for a second (refillWait).

// refillKeyAhead refills a key's lease, validating the key with it as
// every store call on a key does. A changed record goes into the key
// cache; a key no longer valid, or whose record changed, loses the lease
// (the lease of a record revision, keyLease), so that its next request
// asks the store: refused, or granted a lease of the new record's.
func (h *Handler) refillKeyAhead(lk leaseKey, pending *refill, entry *cachedKey, hash apikey.Hash) {
	epoch, _ := h.app.shared.epochs.current(time.Now()) // read before the grant
	h.refillAhead(lk, pending, epoch, func(ctx context.Context, start time.Time, ask store.Ask) (store.Decision, error) {
		verdict, err := h.checkKey(ctx, start, lk.subject, hash, lk.revision, lk.policy, ask)
		if err != nil {
			return store.Decision{}, err
		}
		if verdict.Fresh != nil {
			entry.record.Store(newIdentity(verdict.Fresh))
		}
		if verdict.Status != store.KeyValid || verdict.Fresh != nil {
			h.leases.drop(lk)
			return store.Decision{}, nil // nothing granted
		}
		entry.validatedAt.Store(start.UnixNano())
		return verdict.Limit, nil
	})
}

// refillAnonymousAhead refills an anonymous subject's lease.
func (h *Handler) refillAnonymousAhead(lk leaseKey, pending *refill) {
	h.refillAhead(lk, pending, 0, func(ctx context.Context, start time.Time, ask store.Ask) (store.Decision, error) {
		return h.limitSubject(ctx, start, lk.subject, ask)
	})
}

// refillAhead asks the store, through call (given when it began), for the
// lease lk wants next under the store's epoch given, adds what it grants
// to the lease, and ends pending.
func (h *Handler) refillAhead(lk leaseKey, pending *refill, epoch int64, call func(context.Context, time.Time, store.Ask) (store.Decision, error)) {
	start := time.Now()
	ask, worth := h.leases.wantAhead(lk, pending, start, epoch)
	if !worth {
		pending.end(nil)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.app.Timeout))
	d, err := call(ctx, start, ask)
	cancel()
	h.leases.refilled(lk, pending, d, time.Now(), err)
	if err == nil {
		h.app.metrics.refilled(d)
	}
}

// awaitRefill waits for pending, a refill of the lease a request found
// spent, or for the request's end. The error is the refill's (its store
// call failed: this request's would have too) or the request's context's.
func (h *Handler) awaitRefill(ctx context.Context, pending *refill) error {
	h.app.metrics.refillWaits.Inc()
	select {
	case <-pending.done:
		return pending.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
