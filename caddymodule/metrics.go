package keygate

import (
	"errors"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// outcome is how the gateway decided a request: the label of
// keygate_decisions_total. There are no per-key labels, so the series
// count stays fixed however many keys exist.
type outcome int

const (
	outcomeAllowed outcome = iota
	outcomeAnonymous
	outcomeFailOpen
	outcomeMissing
	outcomeMalformed
	outcomeInvalid
	outcomeConflict
	outcomeForbidden
	outcomeLimited
	outcomeStoreError
	outcomeClientGone
	outcomeMisconfigured
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"allowed", "anonymous", "fail_open", "missing_key", "malformed_key",
	"invalid_key", "conflicting_keys", "forbidden", "rate_limited", "store_error",
	"client_gone", "misconfigured",
}

// storeOp is a kind of store call: the label of keygate_store_*.
type storeOp int

const (
	storeLookup storeOp = iota // a key's id by its hash: first sight of a key
	storeCheck                 // a key validated and counted
	storeLimit                 // an anonymous client counted
	numStoreOps
)

var storeOpNames = [numStoreOps]string{"lookup", "check", "limit"}

// metrics are keygate's Prometheus collectors, registered in Caddy's
// registry (served by the admin API's /metrics and the metrics handler).
type metrics struct {
	// each series looked up once, not by its label on every request
	decisions     [numOutcomes]prometheus.Counter
	storeDuration [numStoreOps]prometheus.Observer
	storeErrors   [numStoreOps]prometheus.Counter
	// Requests leased beyond the asking ones (all of a refill ahead), and
	// those admitted from leases: what a gateway leased and did not admit
	// was counted against limits unused (lapsed, or still held), the
	// precision leasing costs.
	leaseGranted, leaseAdmitted prometheus.Counter
	// Requests that found their lease spent and waited for its refill on
	// its way: a refill that came later than the lease lasted.
	refillWaits prometheus.Counter
	// timeStoreCalls is false on the embedded store, whose calls run in
	// process: timing them would cost more than they do.
	timeStoreCalls bool
}

// newMetrics registers the collectors in reg; timeStoreCalls is false for
// the embedded store.
func newMetrics(reg prometheus.Registerer, timeStoreCalls bool) *metrics {
	m := &metrics{timeStoreCalls: timeStoreCalls}
	decisions := promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Namespace: "keygate",
		Name:      "decisions_total",
		Help:      "Requests decided by the gateway, by outcome.",
	}, []string{"outcome"})
	for i, name := range outcomeNames {
		m.decisions[i] = decisions.WithLabelValues(name)
	}
	storeDuration := promauto.With(reg).NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "keygate",
		Name:      "store_duration_seconds",
		Help:      "Latency of key store calls, one Redis round trip each (not kept for the embedded store, whose calls run in process), by operation.",
		Buckets:   []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"op"})
	storeErrors := promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Namespace: "keygate",
		Name:      "store_errors_total",
		Help:      "Key store calls that failed, by operation.",
	}, []string{"op"})
	for i, name := range storeOpNames {
		m.storeDuration[i] = storeDuration.WithLabelValues(name)
		m.storeErrors[i] = storeErrors.WithLabelValues(name)
	}
	m.leaseGranted = promauto.With(reg).NewCounter(prometheus.CounterOpts{
		Namespace: "keygate",
		Name:      "lease_granted_requests_total",
		Help:      "Requests the store leased to this gateway beyond the ones that asked (option lease; all of a refill ahead).",
	})
	m.leaseAdmitted = promauto.With(reg).NewCounter(prometheus.CounterOpts{
		Namespace: "keygate",
		Name:      "lease_admitted_requests_total",
		Help:      "Requests admitted from a lease, without a store call; granted minus admitted were counted against limits unused.",
	})
	m.refillWaits = promauto.With(reg).NewCounter(prometheus.CounterOpts{
		Namespace: "keygate",
		Name:      "lease_refill_waits_total",
		Help:      "Requests that found their lease spent and waited for its refill on its way (then counted as admitted from the lease, or as asking the store).",
	})
	return m
}

// leased records a decision of a handler with leases: one from the store
// may carry a lease, one with nothing granted was admitted from a lease.
func (m *metrics) leased(d store.Decision) {
	switch {
	case !d.Allowed:
	case d.Granted == 0:
		m.leaseAdmitted.Inc()
	case d.Granted > 1:
		m.leaseGranted.Add(float64(d.Leased(false)))
	}
}

// refilled records what the store granted to a refill ahead: all of it
// leased.
func (m *metrics) refilled(d store.Decision) {
	if d.Allowed {
		m.leaseGranted.Add(float64(d.Leased(true)))
	}
}

func (m *metrics) decision(o outcome) prometheus.Counter { return m.decisions[o] }

// observeStore records a store call that began at start and ended with
// err. One that ended because its request did (the client left) is not the
// store's failure, nor a measure of how long the store takes.
func (m *metrics) observeStore(op storeOp, start time.Time, err error) {
	if clientLeft(err) {
		return
	}
	if m.timeStoreCalls {
		m.storeDuration[op].Observe(time.Since(start).Seconds())
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) { // "no such key" is an answer
		m.storeErrors[op].Inc()
	}
}
