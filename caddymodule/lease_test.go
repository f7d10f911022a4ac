package keygate

import (
	"cmp"
	"context"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/metricstest"
	"github.com/keygate/keygate/internal/redisstats"
	"github.com/keygate/keygate/internal/redistest"
)

func TestLeaseTable(t *testing.T) {
	tbl := newLeaseTable(8, store.SlidingWindow)
	k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 100, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	grant := func(granted, remaining int64, at time.Time) store.Decision {
		return store.Decision{Allowed: true, Limit: 100, Remaining: remaining, Granted: granted, Lease: time.Second, Reset: at.Add(time.Hour)}
	}
	want := func(tbl *leaseTable, at time.Time) int64 {
		t.Helper()
		ask := tbl.want(k, at, 0)
		if ask.Spread != 0 || ask.Ahead {
			t.Fatalf("a sliding window lease asked for %+v", ask)
		}
		return ask.Take
	}

	if n := want(tbl, t0); n != 1 {
		t.Fatalf("first want %d, want 1", n)
	}
	if _, ok, _ := tbl.take(k, t0, 0, true); ok {
		t.Fatal("took from a lease nobody granted")
	}
	d := tbl.put(k, grant(1, 99, t0), store.Ask{Take: 1}, t0, 0, t0)
	if d.Remaining != 99 {
		t.Fatalf("remaining %d", d.Remaining)
	}
	// Used up, and the next request comes 200ms after the grant: at that
	// pace (5 a second) the minute a lease may last would use 300, but a
	// lease at most doubles.
	sizes := newLeaseTable(64, store.SlidingWindow)
	sizes.put(k, grant(1, 99, t0), store.Ask{Take: 1}, t0, 0, t0)
	if n := want(sizes, t0.Add(200*time.Millisecond)); n != 2 {
		t.Fatalf("want %d after 200ms, expected twice the last, 2", n)
	}
	// A steady 10 a second grows its lease twofold per grant up to the
	// maximum, where it stays; from a lease of 4 on, each refill is asked
	// for ahead of time, so no request finds the lease spent.
	ramp := newLeaseTable(64, store.SlidingWindow)
	now := t0
	var asked []int64
	for range 400 {
		fromLease, called, leased := oneRequest(ramp, k, now)
		if called {
			if !fromLease {
				leased++ // the asking request's own
			}
			asked = append(asked, leased)
			if !fromLease && len(asked) > 1 && asked[len(asked)-2] >= 4 {
				t.Fatalf("ramp at %v: the lease of %d ran out before its refill", now.Sub(t0), asked[len(asked)-2])
			}
		}
		now = now.Add(100 * time.Millisecond)
	}
	if want := []int64{1, 2, 4, 8, 16, 32, 64, 64, 64}; !slices.Equal(asked[:min(len(asked), len(want))], want) {
		t.Fatalf("ramp asked for %v, want %v", asked, want)
	}
	// A lease of n admits exactly n requests, the asking one and n-1 from
	// the lease. The request that finds a third of it left is admitted and
	// has the lease refilled ahead.
	n := int64(8)
	tbl.put(k, grant(n, 50, t0), store.Ask{Take: n}, t0, 0, t0)
	var refused, refills []int
	for i := range 12 {
		_, ok, refill := tbl.take(k, t0, 0, true)
		if !ok {
			refused = append(refused, i+1)
		}
		if ok && refill != nil {
			refills = append(refills, i+1)
		}
	}
	if want := []int{8, 9, 10, 11, 12}; !slices.Equal(refused, want) || !slices.Equal(refills, []int{6}) {
		t.Fatalf("takes refused: %v, want %v (8th on: spent); refills %v, want [6]", refused, want, refills)
	}
	// headers count the lease as the caller's: remaining falls by one a
	// request, the refill notwithstanding
	tbl.put(k, grant(4, 40, t0), store.Ask{Take: 4}, t0, 0, t0)
	var remaining []int64
	for range 4 {
		if d, ok, _ := tbl.take(k, t0, 0, true); ok {
			remaining = append(remaining, d.Remaining)
		}
	}
	if want := []int64{42, 41, 40}; !slices.Equal(remaining, want) {
		t.Fatalf("remaining %v, want %v", remaining, want)
	}
	// a lease ends after its TTL
	tbl.put(k, grant(8, 30, t0), store.Ask{Take: 8}, t0, 0, t0)
	tbl.take(k, t0, 0, true)
	tbl.take(k, t0, 0, true)
	later := t0.Add(time.Second)
	if _, ok, _ := tbl.take(k, later, 0, true); ok {
		t.Fatal("took from an ended lease")
	}
	// The next after one that ended with its window is what the pace since
	// its grant would use until the window now running ends: 4 in 15s, and
	// 55s of a one-minute window left, 15; after an idle while, the pace
	// has fallen to one at a time.
	perMinute := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 100, Window: time.Minute}}
	for _, c := range []struct {
		at   time.Duration
		want int64
	}{{15 * time.Second, 15}, {10*time.Second + 5*time.Minute, 1}} {
		ended := newLeaseTable(64, store.SlidingWindow)
		windowEnd := store.Decision{Allowed: true, Limit: 100, Remaining: 50, Granted: 8, Lease: 10 * time.Second, Reset: t0.Add(10 * time.Second)}
		ended.put(perMinute, windowEnd, store.Ask{Take: 8}, t0, 0, t0)
		for range 3 {
			ended.take(perMinute, t0.Add(time.Second), 0, true)
		}
		if ask := ended.want(perMinute, t0.Add(c.at), 0); ask.Take != c.want {
			t.Fatalf("%v after a lease that ended with its window, want %d; expected %d", c.at, ask.Take, c.want)
		}
	}
	// A refill asks for what the pace (6 in 32s) would use until the window
	// ends (28s: 5.25), less what the lease still holds (2 of 8): 4; unless
	// a key changed since its grant: the lease starts over, at one
	// (TestLeaseStartsOverUnderANewEpoch).
	for _, c := range []struct {
		epoch, want int64
	}{{7, 4}, {8, 1}} {
		held := newLeaseTable(64, store.SlidingWindow)
		window := store.Decision{Allowed: true, Limit: 100, Remaining: 50, Granted: 8, Lease: time.Minute, Reset: t0.Add(time.Minute)}
		held.put(perMinute, window, store.Ask{Take: 8}, t0, 7, t0)
		for range 5 {
			held.take(perMinute, t0.Add(time.Second), 7, true)
		}
		if ask := held.want(perMinute, t0.Add(32*time.Second), c.epoch); ask.Take != c.want {
			t.Fatalf("refill under epoch %d of a lease granted under 7, holding 2: want %d, expected %d", c.epoch, ask.Take, c.want)
		}
	}
	// Two concurrent grants are both kept, each until its own end, and the
	// lower remaining is reported.
	tbl.put(k, grant(3, 20, later), store.Ask{Take: 3}, later, 0, later)
	short := grant(3, 17, later)
	short.Lease = 200 * time.Millisecond
	if d := tbl.put(k, short, store.Ask{Take: 3}, later, 0, later); d.Remaining != 17+2+2 {
		t.Fatalf("concurrent grants: remaining %d, want 21", d.Remaining)
	}
	// the first take is from the grant that ends first
	if _, ok, _ := tbl.take(k, later.Add(100*time.Millisecond), 0, true); !ok {
		t.Fatal("concurrent grants: refused the first take")
	}
	// at 250ms the short grant's other one has lapsed; the long's two are left
	for _, want := range []int64{18, 17} {
		if d, ok, _ := tbl.take(k, later.Add(250*time.Millisecond), 0, true); !ok || d.Remaining != want {
			t.Fatalf("concurrent grants, after the shorter ended: %+v %v, want remaining %d", d, ok, want)
		}
	}
	if _, ok, _ := tbl.take(k, later.Add(250*time.Millisecond), 0, true); ok {
		t.Fatal("concurrent grants admitted more than was left")
	}
	// a key's lease needs the epoch it was granted under, freshly confirmed
	at := later.Add(2 * time.Second)
	tbl.put(k, grant(4, 10, at), store.Ask{Take: 4}, at, 7, at)
	if _, ok, _ := tbl.take(k, at, 7, false); ok {
		t.Fatal("took with an unconfirmed epoch")
	}
	if _, ok, _ := tbl.take(k, at, 8, true); ok {
		t.Fatal("took after a key changed")
	}
	if _, ok, _ := tbl.take(k, at, 7, true); !ok {
		t.Fatal("lease refused under its own epoch")
	}
	// a grant under the new epoch replaces the stale lease, never joins it
	tbl.put(k, grant(2, 5, at), store.Ask{Take: 2}, at, 8, at)
	for i := range 2 {
		_, ok, _ := tbl.take(k, at, 8, true)
		if ok != (i == 0) {
			t.Fatalf("take %d under the new epoch: %v", i, ok)
		}
	}
	// nor does a grant asked under the old epoch before one under the new
	// (a refill ahead overtaken by a request that found the key changed),
	// back after it, replace it again
	renewed := at.Add(10 * time.Millisecond)
	tbl.put(k, grant(4, 5, renewed), store.Ask{Take: 4}, renewed, 8, renewed)
	overtaken := &refill{done: make(chan struct{}), ask: store.Ask{Take: 4, Ahead: true}, start: at, epoch: 7}
	tbl.refilled(k, overtaken, grant(4, 5, at), renewed, nil)
	for i := range 4 {
		if _, ok, _ := tbl.take(k, renewed, 8, true); ok != (i < 3) {
			t.Fatalf("take %d of the 3 held under the new epoch, after an older grant came back: %v", i, ok)
		}
	}
	// anonymous leases have no key to revoke
	anon := leaseKey{kind: 's', subject: "203.0.113.9", policy: k.policy}
	tbl.put(anon, grant(2, 5, at), store.Ask{Take: 2}, at, 0, at)
	if _, ok, _ := tbl.take(anon, at, 9, false); !ok {
		t.Fatal("anonymous lease refused over the epoch")
	}

	// a refusal is passed on as it is
	if d := tbl.put(k, store.Decision{Limit: 100, RetryAfter: time.Second}, store.Ask{Take: 1}, later, 0, later); d.Allowed || d.RetryAfter != time.Second {
		t.Fatalf("refusal became %+v", d)
	}
}

// A sliding_log lease may last longer than its window: its requests'
// X-RateLimit-Reset, the grant's (when the oldest request it counted drops
// out of the window), is never before the request.
func TestLeasedResetIsNeverPast(t *testing.T) {
	k := leaseKey{kind: 's', subject: "198.51.100.7", policy: store.Policy{Limit: 40, Window: time.Second}}
	t0 := time.Unix(1_800_000_000, 0)
	tbl := newLeaseTable(30, store.SlidingLog)
	d := store.Decision{Allowed: true, Limit: 40, Remaining: 10, Reset: t0.Add(time.Second), Granted: 30, Lease: 30 * time.Second, Staggered: true}
	tbl.put(k, d, store.Ask{Take: 30, Spread: 30 * time.Second}, t0, 0, t0)
	at := t0.Add(5 * time.Second)
	got, ok, _ := tbl.take(k, at, 0, true)
	if !ok || got.Reset.Before(at) {
		t.Fatalf("taken 5s into a 30s lease of a 1s window: %+v %v; want a Reset no earlier than %v", got, ok, at)
	}
}

// A sliding_log lease's i-th request may be admitted until the moment the
// store logged it (store.StaggeredDeadline) and not after: one admitted
// later would stay counted less than a full window. Those whose moment
// passed unused lapse; the rest are still there. A lease asked ahead has
// every request granted staggered so; otherwise the asking one is not the
// lease's.
func TestStaggeredLease(t *testing.T) {
	k := leaseKey{kind: 's', subject: "198.51.100.7", policy: store.Policy{Limit: 1000, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		granted int64
		lease   time.Duration
	}{{2, time.Second}, {5, 2 * time.Second}, {8, 3 * time.Second}, {64, time.Minute}, {61, 7 * time.Second}} {
		for _, ahead := range []bool{false, true} {
			d := store.Decision{Allowed: true, Limit: 1000, Remaining: 500, Granted: c.granted, Lease: c.lease, Staggered: true}
			n := d.Leased(ahead)
			ask := store.Ask{Take: c.granted, Spread: c.lease, Ahead: ahead}
			granted := func() *leaseTable {
				tbl := newLeaseTable(c.granted, store.SlidingLog)
				if ahead {
					tbl.refilled(k, &refill{done: make(chan struct{}), ask: ask, start: t0}, d, t0, nil)
				} else {
					tbl.put(k, d, ask, t0, 0, t0)
				}
				return tbl
			}
			for i := int64(1); i <= n; i++ {
				deadline := t0.Add(store.StaggeredDeadline(i, n, c.lease))
				// Admitting the i-th just before its moment: the ones before
				// it have lapsed, it is admitted, the ones after it are left.
				tbl := granted()
				got, ok, _ := tbl.take(k, deadline.Add(-time.Nanosecond), 0, true)
				if !ok || got.Remaining != 500+n-i {
					t.Fatalf("%d over %v (ahead %v): the %d-th just before its moment: %+v %v, want remaining %d", n, c.lease, ahead, i, got, ok, 500+n-i)
				}
				// At its moment it is gone.
				tbl = granted()
				got, ok, _ = tbl.take(k, deadline, 0, true)
				if i == n && ok || i < n && (!ok || got.Remaining != 500+n-i-1) {
					t.Fatalf("%d over %v (ahead %v): the %d-th at its moment: %+v %v", n, c.lease, ahead, i, got, ok)
				}
			}
		}
	}
	// used ahead of time, every one is admitted
	tbl := newLeaseTable(8, store.SlidingLog)
	tbl.put(k, store.Decision{Allowed: true, Granted: 8, Lease: time.Second, Staggered: true}, store.Ask{Take: 8, Spread: time.Second}, t0, 0, t0)
	for i := range 7 {
		if _, ok, _ := tbl.take(k, t0.Add(time.Millisecond), 0, true); !ok {
			t.Fatalf("take %d of 7 ahead of time refused", i+1)
		}
	}
	if _, ok, _ := tbl.take(k, t0.Add(time.Millisecond), 0, true); ok {
		t.Fatal("took past the lease")
	}
}

// A sliding_log lease is what the pace since the last grant would use in
// half a minute, spread over twice the time that pace takes to use it, and
// at most twice the last asked for.
func TestLogLeaseSizing(t *testing.T) {
	k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 1000, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	one := store.Decision{Allowed: true, Limit: 1000, Remaining: 999, Granted: 1, Lease: store.MaxLease}
	for _, c := range []struct {
		name   string
		asked  int64         // the last grant's size
		next   time.Duration // when the next request comes
		n      int64
		spread time.Duration
	}{
		{"slow key: 2/3 a second", 32, 1500 * time.Millisecond, 20, time.Minute},
		{"busy key: 10 a second", 32, 100 * time.Millisecond, 64, 12800 * time.Millisecond},
		{"flat out: the maximum over a second", 32, time.Millisecond, 64, time.Second},
		{"flat out, after one at a time: twice that", 1, time.Millisecond, 2, time.Second},
		{"seen once a minute: one at a time", 32, 61 * time.Second, 1, 0},
	} {
		tbl := newLeaseTable(64, store.SlidingLog)
		tbl.put(k, one, store.Ask{Take: c.asked}, t0, 0, t0)
		if ask := tbl.want(k, t0.Add(c.next), 0); ask != (store.Ask{Take: c.n, Spread: c.spread}) {
			t.Errorf("%s: want %d over %v, expected %d over %v", c.name, ask.Take, ask.Spread, c.n, c.spread)
		}
	}
	// A lease that ended with requests unused: the pace since its grant,
	// 5 in a minute.
	tbl := newLeaseTable(64, store.SlidingLog)
	tbl.put(k, store.Decision{Allowed: true, Limit: 1000, Granted: 21, Lease: 10 * time.Second, Staggered: true}, store.Ask{Take: 21, Spread: 10 * time.Second}, t0, 0, t0)
	for i := range 4 {
		tbl.take(k, t0.Add(time.Duration(i+1)*time.Second), 0, true)
	}
	if ask := tbl.want(k, t0.Add(time.Minute), 0); ask != (store.Ask{Take: 3, Spread: time.Minute}) {
		t.Errorf("after a lease that ended: want %d over %v, expected 3 over 1m (5 in 60s)", ask.Take, ask.Spread)
	}
}

// With leases, a key's requests mostly skip the store, the headers still
// count down one by one, a lease lasts while nothing changes, and a
// disabled key stops within the epoch's second.
func TestLeasesThroughTheGateway(t *testing.T) {
	g := startRedisGateway(t, "", `
	keygate {
		rate_limit 1000 1h
		lease 64
	}
	reverse_proxy {upstream}`)
	k := generate(t, "--name", "leased")
	const requests = 100
	for i := range requests {
		r := g.get("/", bearer(k.Key)...)
		if r.status != http.StatusOK {
			t.Fatalf("request %d: %d %s", i+1, r.status, r.body)
		}
		if rem := r.header.Get("X-RateLimit-Remaining"); rem != strconv.Itoa(1000-1-i) {
			t.Fatalf("request %d: X-RateLimit-Remaining %s, want %d", i+1, rem, 1000-1-i)
		}
	}
	// leases grow to 64 within a few round trips; more only if a lease
	// ended unused on a slow machine
	calls := metricstest.StoreCalls(t, adminAddr, "check")
	if calls > requests/4 {
		t.Fatalf("%d store round trips for %d requests", calls, requests)
	}
	// every request that made no store call of its own came from a lease
	// (the other calls were refills ahead), and the gateway holds the rest
	// of what it leased: at most twice the lease (more than a hundredth of
	// the limit), however long refills took (holdMost)
	granted := metricstest.Value(t, adminAddr, "keygate_lease_granted_requests_total")
	admitted := metricstest.Value(t, adminAddr, "keygate_lease_admitted_requests_total")
	if admitted+float64(calls) < requests || admitted > requests || granted < admitted || granted > admitted+holdLeases*64 {
		t.Fatalf("leases: %v granted, %v admitted, after %d requests and %d store calls", granted, admitted, requests, calls)
	}

	// A lease outlives the second while no key changes: what is left of
	// the burst's last lease serves a slow trickle for seconds.
	before := metricstest.StoreCalls(t, adminAddr, "check")
	for range 8 {
		time.Sleep(400 * time.Millisecond)
		if r := g.get("/", bearer(k.Key)...); r.status != http.StatusOK {
			t.Fatalf("slow request: %d", r.status)
		}
	}
	if calls := metricstest.StoreCalls(t, adminAddr, "check") - before; calls > 1 {
		t.Fatalf("%d store round trips for 8 requests over 3.2s", calls)
	}

	// A change to the key reaches the gateway through the epoch: well
	// within a second, leases or not.
	mustCLI(t, "disable", "leased")
	disabled := time.Now()
	for g.get("/", bearer(k.Key)...).status != http.StatusUnauthorized {
		if time.Since(disabled) > epochFresh+time.Second {
			t.Fatalf("disabled key still admitted %v after disabling", time.Since(disabled))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("disabled key refused after %v", time.Since(disabled).Round(time.Millisecond))
}

// A request whose client leaves while it waits for the store (here, for its
// lease's refill, with the store stalled) is not a store outage: it counts
// as client_gone, not as store_error nor as a store call's error.
func TestAClientThatLeavesIsNotAStoreOutage(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, leasedSite, "timeout 5s") // the refill's own failure comes long after the checks
	auth := bearer(generate(t, "--name", "impatient").Key)
	held := heldAfterBusyTraffic(t, g, auth...)
	counter := func(series string) float64 { return metricstest.Counter(t, adminAddr, series) }
	const gone, outage, storeErrors = `keygate_decisions_total{outcome="client_gone"}`, `keygate_decisions_total{outcome="store_error"}`, `keygate_store_errors_total{op="check"}`
	goneBefore, outageBefore, errorsBefore := counter(gone), counter(outage), counter(storeErrors)

	waitsBefore := refillWaits(t)
	waitForTheRefill(t, g, srv, held, 0, auth...) // the store stalled, the lease spent
	req, _ := http.NewRequest(http.MethodGet, g.base+"/", nil)
	req.Header.Set(auth[0], auth[1])
	impatient := &http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := impatient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a request with the store stalled and the lease spent: %d before the client left", resp.StatusCode)
	}
	if refillWaits(t) != waitsBefore+1 {
		t.Fatal("the request did not wait for the refill")
	}
	for deadline := time.Now().Add(time.Second); counter(gone) < goneBefore+1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("client_gone %v after the client left, want %v", counter(gone), goneBefore+1)
		}
	}
	if counter(outage) != outageBefore || counter(storeErrors) != errorsBefore {
		t.Errorf("the client's leaving counted as a store outage: store_error %v → %v, store errors %v → %v",
			outageBefore, counter(outage), errorsBefore, counter(storeErrors))
	}
}

// A key's lease held under an epoch since changed (a key changed) starts
// over as a new one: the requests that find it unusable ask for one each,
// and it doubles again from there. At its last size every request that came
// in while the first grant was on its way would lease a full one.
func TestLeaseStartsOverUnderANewEpoch(t *testing.T) {
	for _, a := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		tbl := newLeaseTable(64, a)
		k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 1_000_000_000, Window: time.Hour}}
		now := time.Unix(1_800_000_000, 0)
		for range 1000 { // 100 a second, under epoch 0 (oneRequest)
			oneRequest(tbl, k, now)
			now = now.Add(10 * time.Millisecond)
		}
		if size := tbl.shard(k).leases[k].size; size != 64 {
			t.Fatalf("%s: the lease grew to %d, want 64", a, size)
		}
		for range 3 { // concurrent requests, none of which can use the lease
			if ask := tbl.want(k, now, 1); ask.Take != 1 {
				t.Errorf("%s: under a new epoch a request asks for %d, want 1", a, ask.Take)
			}
		}
	}
}

// While the epoch cannot be read, no key's lease may be used, and none is
// asked for: it would be counted against the limit and lapse unused.
func TestNoLeaseIsAskedForWhileTheEpochIsUnconfirmed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	// the epoch poll's GET fails (WRONGTYPE) while the scripts work
	if err := rdb.HSet(context.Background(), "keygate:epoch", "broken", 1).Err(); err != nil {
		t.Fatal(err)
	}
	g := startGatewayOn(t, srv, `
	keygate {
		rate_limit 1000000 1h
		lease 64
	}
	reverse_proxy {upstream}`)
	k := generate(t, "--name", "unconfirmed")
	leasedBefore := metricstest.Value(t, adminAddr, "keygate_lease_granted_requests_total")
	for i := range 20 {
		if r := g.get("/", bearer(k.Key)...); r.status != http.StatusOK {
			t.Fatalf("request %d: %d %s", i+1, r.status, r.body)
		}
	}
	if leased := metricstest.Value(t, adminAddr, "keygate_lease_granted_requests_total") - leasedBefore; leased != 0 {
		t.Errorf("%v requests leased while the epoch could not be confirmed", leased)
	}
}

// The epoch is polled only while a config loaded has handlers with leases:
// a reload that drops the last one stops the polling (the store stays
// open for the new config), and one that brings leases back restarts it.
func TestEpochIsPolledOnlyWhileLeasesAreConfigured(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	const leased, unleased = `
	keygate {
		rate_limit 1000000 1h
		lease 64
	}
	reverse_proxy {upstream}`, `
	keygate {
		rate_limit 1000000 1h
	}
	reverse_proxy {upstream}`
	epochReadsIn := func(d time.Duration) int64 {
		t.Helper()
		time.Sleep(epochPollEvery) // a poll on its way ends
		before := commandCalls(t, rdb, "get")
		time.Sleep(d)
		return commandCalls(t, rdb, "get") - before
	}

	g := startGatewayOn(t, srv, leased)
	auth := bearer(generate(t, "--name", "polled").Key)
	if n := epochReadsIn(time.Second); n < 2 {
		t.Fatalf("with leases configured, %d epoch reads in a second, want about 4", n)
	}
	g = startGatewayOn(t, srv, unleased)
	if r := g.get("/", auth...); r.status != http.StatusOK {
		t.Fatalf("without leases: %d %s", r.status, r.body)
	}
	if n := epochReadsIn(time.Second); n != 0 {
		t.Errorf("after a reload without leases, %d epoch reads in a second, want none", n)
	}
	g = startGatewayOn(t, srv, leased)
	if n := epochReadsIn(time.Second); n < 2 {
		t.Fatalf("after a reload with leases again, %d epoch reads in a second, want about 4", n)
	}
	admittedBefore := metricstest.Value(t, adminAddr, "keygate_lease_admitted_requests_total")
	busyTraffic(t, g, auth...)
	if metricstest.Value(t, adminAddr, "keygate_lease_admitted_requests_total") == admittedBefore {
		t.Error("after a reload with leases again, no request was admitted from a lease")
	}
}

// commandCalls is how many times Redis has run command (INFO commandstats).
func commandCalls(t *testing.T, rdb *redis.Client, command string) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	return redisstats.Parse(info)[command].Calls
}

// A rotated key's old value stops working once the gateway sees the
// rotation, even while its new value holds a lease of the same key id:
// the old value's hash still finds the old record in the key cache, and a
// lease is the record revision's it was granted for, so the old value asks
// the store, which refuses it.
func TestRotatedKeyDoesNotUseItsSuccessorsLease(t *testing.T) {
	g := startRedisGateway(t, "", leasedSite)
	old := generate(t, "--name", "rotated")
	busyTraffic(t, g, bearer(old.Key)...) // its record cached, and a lease
	var rotated keyView
	mustJSON(t, mustCLI(t, "rotate", "rotated", "--json"), &rotated)
	time.Sleep(epochFresh + 250*time.Millisecond) // every lease of before is over
	busyTraffic(t, g, bearer(rotated.Key)...)     // the new value's lease
	for i := range 20 {
		if r := g.get("/", bearer(rotated.Key)...); r.status != http.StatusOK {
			t.Fatalf("new value, request %d: %d %s", i+1, r.status, r.body)
		}
		if r := g.get("/", bearer(old.Key)...); r.status != http.StatusUnauthorized {
			t.Fatalf("old value, request %d after the rotation was seen: %d, want 401", i+1, r.status)
		}
	}
}

// When the store stops answering, the epoch can no longer be confirmed and
// keys' leases stop too: a revocation during an outage must not go unseen.
func TestLeasesStopWhenTheStoreStops(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, `
	keygate {
		rate_limit 1000 1h
		lease 64
	}
	reverse_proxy {upstream}`, "")
	k := generate(t, "--name", "outage")
	for range 30 {
		if r := g.get("/", bearer(k.Key)...); r.status != http.StatusOK {
			t.Fatalf("%d", r.status)
		}
	}
	srv.Pause()
	defer srv.Resume()
	paused := time.Now()
	for g.get("/", bearer(k.Key)...).status == http.StatusOK {
		if time.Since(paused) > epochFresh+2*time.Second {
			t.Fatalf("leased requests still admitted %v into the outage", time.Since(paused))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("leases stopped %v into the outage", time.Since(paused).Round(time.Millisecond))
}

// anonymousLeasing is a site whose anonymous callers lease 64 requests at
// a time of a limit no test reaches.
const anonymousLeasing = `
	keygate {
		anonymous 1000000 24h
		lease 64
	}
	reverse_proxy {upstream}`

// A lease is refilled in the background: while it holds requests, none of
// them waits for the store, not even when the store stalls. Refilled in
// line instead, the request that found a third of the lease left would
// wait for the store's timeout and be refused (503) with requests still
// held.
func TestRefillAheadDoesNotWait(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, anonymousLeasing)
	held := heldAfterBusyTraffic(t, g)

	srv.Pause()
	defer srv.Resume()
	served := 0
	for g.get("/").status == http.StatusOK {
		if served++; served > held {
			t.Fatalf("more served than the %d held while the store stalls", held)
		}
	}
	if served != held {
		t.Fatalf("with the store stalled, %d served before one waited for it; %d were held", served, held)
	}
	srv.Resume()
	if r := g.get("/"); r.status != http.StatusOK {
		t.Fatalf("after the stall: %d %s", r.status, r.body)
	}
}

// A request that waited for a refill reports the seconds to the reset
// (RateLimit's t) from when it was admitted, not from when it arrived: an
// anonymous one here, which waits for the store 1.5 s.
func TestHeadersAfterWaitingForARefill(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, anonymousLeasing, "timeout 3s")
	wantCountedFromTheResume(t, srv, waitForTheRefill(t, g, srv, heldAfterBusyTraffic(t, g), 1))
}

// Requests that find a lease spent while its refill is on its way wait for
// it and are admitted from its grant, where each would otherwise ask the
// store for a lease of its own: no store call but refills' (several go at
// once when refills are that slow). Should
// the refill fail, its waiter has its error, 503 here, without a store
// call of its own after it (which would double the wait in an outage).
func TestRequestsWaitForTheRefillOnItsWay(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, leasedSite, "timeout 2s")
	k := generate(t, "--name", "waited-for")
	auth := bearer(k.Key)
	held := heldAfterBusyTraffic(t, g, auth...)
	calls := metricstest.StoreCalls(t, adminAddr, "check")
	admitted := func() int { return int(metricstest.Value(t, adminAddr, "keygate_lease_admitted_requests_total")) }
	admittedBefore := admitted()

	// The store stalls; the held requests are served, one of them having
	// the lease refilled, and the refill waits for the store.
	const waiters = 4
	responses := waitForTheRefill(t, g, srv, held, waiters, auth...)
	srv.Resume()
	for range waiters {
		if r := <-responses; r.status != http.StatusOK {
			t.Fatalf("a request that waited for the refill: %d", r.status)
		}
	}
	if got := admitted() - admittedBefore; got != held+waiters {
		t.Fatalf("%d admitted from the lease of %d held requests and %d waiters", got, held, waiters)
	}
	if got := metricstest.StoreCalls(t, adminAddr, "check") - calls; got < 1 || got > refillsOnTheWay+1 {
		t.Fatalf("%d store calls for %d held requests and %d waiters, want refills only", got, held, waiters)
	}

	// The store stalls again, past the timeout: the request that waits
	// for the refill has its error. (Another key: this one's refills have
	// been slow, and several would go at once.)
	auth = bearer(generate(t, "--name", "failed-refill").Key)
	busyTraffic(t, g, auth...)
	storeErrors := metricstest.Counter(t, adminAddr, `keygate_store_errors_total{op="check"}`)
	waitsBefore := refillWaits(t)
	srv.Pause()
	status := http.StatusOK
	for served := 0; status == http.StatusOK; served++ {
		if served > 64 {
			t.Fatal("more served than a lease of 64 holds with the store stalled")
		}
		status = g.get("/", auth...).status
	}
	srv.Resume()
	if status != http.StatusServiceUnavailable {
		t.Fatalf("the request that waited for a failed refill: %d, want 503", status)
	}
	if got := metricstest.Counter(t, adminAddr, `keygate_store_errors_total{op="check"}`) - storeErrors; got != 1 || refillWaits(t) != waitsBefore+1 {
		t.Fatalf("%v store errors and %d waits, want 1 (the refill) and 1", got, refillWaits(t)-waitsBefore)
	}
}

// The request that finds a third of a lease left is admitted and has it
// refilled ahead, while the others go on taking; no other refill goes
// until that one is back or a second has passed, not even once requests
// that found the lease spent meanwhile brought one back. The refill's
// grant joins what is left, all of it the lease's, reporting the store's
// newer remaining; refused, it leaves what the gateway holds, and a
// request that asked the store itself and was refused still takes one of
// those.
func TestRefillAhead(t *testing.T) {
	k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 1000, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	tbl := newLeaseTable(64, store.SlidingLog)
	lease := func(granted, remaining int64) store.Decision {
		return store.Decision{Allowed: true, Limit: 1000, Remaining: remaining, Granted: granted, Lease: 10 * time.Second, Staggered: true}
	}
	// takes is how many of count takes at now were admitted and which
	// (from 1) started a refill, the last of them in started.
	var started *refill
	takes := func(tbl *leaseTable, now time.Time, count int) (admitted int, refills []int) {
		for i := range count {
			_, ok, refill := tbl.take(k, now, 0, true)
			if ok {
				admitted++
			}
			if ok && refill != nil {
				refills = append(refills, i+1)
				started = refill
			}
		}
		return admitted, refills
	}
	// remaining is what a take at now reports remaining once it is taken.
	remaining := func(tbl *leaseTable, now time.Time) int64 {
		d, _, _ := tbl.take(k, now, 0, true)
		return d.Remaining
	}
	tbl.put(k, lease(16, 900), store.Ask{Take: 16, Spread: 10 * time.Second}, t0, 0, t0)
	now := t0.Add(time.Millisecond)
	// 15 held: the 11th take finds 5, a third of 16, left
	if admitted, refills := takes(tbl, now, 12); admitted != 12 || !slices.Equal(refills, []int{11}) {
		t.Fatalf("12 takes of 15: %d admitted, refills at %v; want all, a refill at the 11th", admitted, refills)
	}
	ask, worth := tbl.wantAhead(k, started, now, 0)
	if !worth || ask != (store.Ask{Take: 32, Spread: ask.Spread, Ahead: true}) {
		t.Fatalf("refill: want %+v, expected 32 ahead (twice the last, the pace being far higher)", ask)
	}
	// The refill comes back with 32, all the lease's, and joins the 3
	// left; its remaining is the store's latest.
	tbl.refilled(k, started, lease(32, 850), now, nil)
	if r := remaining(tbl, now); r != 850+3+32-1 {
		t.Fatalf("refill: remaining %d after a take, want %d", r, 850+3+32-1)
	}
	if admitted, _ := takes(tbl, now, 40); admitted != 34 {
		t.Fatalf("after the refill: %d admitted, want the 34 held", admitted)
	}

	// A refill ahead overtaken by a request that found the lease spent (it
	// took longer than the rest of the lease lasted) adds its requests, but
	// what remains and the pace stay the later grant's.
	tbl = newLeaseTable(64, store.SlidingLog)
	tbl.put(k, lease(4, 900), store.Ask{Take: 4, Spread: 10 * time.Second}, t0, 0, t0)
	if _, refills := takes(tbl, t0, 3); !slices.Equal(refills, []int{3}) {
		t.Fatalf("3 takes of 3: refills at %v, want the 3rd", refills)
	}
	overtaken := started
	tbl.wantAhead(k, overtaken, t0, 0)
	overtaking := t0.Add(10 * time.Millisecond)
	if _, ok, _ := tbl.take(k, overtaking, 0, true); ok {
		t.Fatal("took past the lease")
	}
	tbl.put(k, lease(8, 700), store.Ask{Take: 8, Spread: 10 * time.Second}, overtaking, 0, overtaking)
	// That grant does not end the refill on its way: the 6th take finds a
	// third of its 8 left (2 of its 7), and no second refill goes.
	if admitted, refills := takes(tbl, overtaking, 6); admitted != 6 || refills != nil {
		t.Fatalf("6 takes of 7 while a refill is on its way: %d admitted, refills at %v; want all, none", admitted, refills)
	}
	tbl.refilled(k, overtaken, lease(8, 800), overtaking, nil)
	if r := remaining(tbl, overtaking); r != 700+1+8-1 {
		t.Fatalf("overtaken refill: remaining %d after a take, want the later grant's 700 and the 8 left", r)
	}
	if l := tbl.shard(k).leases[k]; l.since != instantOf(overtaking) || l.granted != 8 {
		t.Fatalf("overtaken refill: pace since %v, granted %d; want the later grant's", l.since.sub(instantOf(t0)), l.granted)
	}
	// Back, it no longer counts as held: the next refill goes at a third
	// of the later grant left (2 of 8, at the 7th take).
	if _, refills := takes(tbl, overtaking, 7); !slices.Equal(refills, []int{7}) {
		t.Fatalf("7 takes of 8 after the refill came back: refills at %v, want the 7th", refills)
	}

	// A refill on its way counts as held: no second goes while the lease
	// would last with it. One that fails holds the next off for a second.
	// (Asked for 64, granted 15, as near the limit: 14 held, and the 10th
	// take finds 5 left, a third of the 15.)
	tbl = newLeaseTable(64, store.SlidingLog)
	tbl.put(k, lease(15, 900), store.Ask{Take: 64, Spread: 10 * time.Second}, t0, 0, t0)
	if admitted, refills := takes(tbl, t0, 10); admitted != 10 || !slices.Equal(refills, []int{10}) {
		t.Fatalf("10 takes of 14: %d admitted, refills at %v; want all, a refill at the 10th", admitted, refills)
	}
	failed := started
	tbl.wantAhead(k, failed, t0, 0)
	if _, refills := takes(tbl, t0.Add(time.Second), 1); refills != nil {
		t.Fatal("a second refill went while the first was on its way")
	}
	tbl.refilled(k, failed, store.Decision{}, t0.Add(time.Second), context.DeadlineExceeded)
	if _, refills := takes(tbl, t0.Add(1999*time.Millisecond), 1); refills != nil {
		t.Fatal("a refill went within a second of one that failed")
	}
	if _, refills := takes(tbl, t0.Add(2*time.Second), 1); refills == nil {
		t.Fatal("no refill went a second after one failed")
	}
	// Refused, the refill leaves what is held: counted already, and
	// nothing beyond it remains.
	refused := store.Decision{Limit: 1000, RetryAfter: time.Second}
	again := &refill{done: make(chan struct{}), ask: store.Ask{Take: 16, Spread: time.Second, Ahead: true}, start: t0.Add(time.Second)}
	tbl.refilled(k, again, refused, t0.Add(time.Second), nil)
	// A request that asked the store itself (a concurrent grant holds one)
	// takes that one when refused.
	d := tbl.put(k, refused, store.Ask{Take: 16, Spread: time.Second}, t0.Add(time.Second), 0, t0.Add(time.Second))
	if !d.Allowed || d.Granted != 0 || d.Remaining != 0 {
		t.Fatalf("refused with one left: %+v, want allowed from the lease, 0 remaining", d)
	}
	if d := tbl.put(k, refused, store.Ask{Take: 16, Spread: time.Second}, t0.Add(time.Second), 0, t0.Add(time.Second)); d.Allowed {
		t.Fatalf("refused with the lease spent: %+v", d)
	}
}

// take gives a request that finds the lease spent the refill on its way,
// to wait for, and only while it is on its way: refilled ends it (its
// waiters then take from its grant), and a key changed since the grant
// has its requests ask the store.
func TestRefillOnItsWay(t *testing.T) {
	k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 1000, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	tbl := newLeaseTable(64, store.SlidingWindow)
	lease := store.Decision{Allowed: true, Limit: 1000, Remaining: 900, Granted: 3, Lease: 10 * time.Second, Reset: t0.Add(time.Hour)}
	tbl.put(k, lease, store.Ask{Take: 3}, t0, 7, t0)
	var pending *refill
	for i := range 2 {
		_, ok, refill := tbl.take(k, t0, 7, true)
		if !ok || (refill != nil) != (i == 1) {
			t.Fatalf("take %d of 2 held: admitted %v, refill %v; want admitted, a refill with the 2nd (a third left)", i+1, ok, refill)
		}
		pending = cmp.Or(pending, refill)
	}
	if _, ok, refill := tbl.take(k, t0, 7, true); ok || refill != pending {
		t.Fatalf("lease spent: admitted %v, refill %p; want the one on its way, %p", ok, refill, pending)
	}
	if _, ok, refill := tbl.take(k, t0, 8, true); ok || refill != nil {
		t.Fatalf("lease spent, key changed: admitted %v, refill %p; want none to wait for", ok, refill)
	}
	ask, _ := tbl.wantAhead(k, pending, t0, 7)
	refillGrant := lease
	refillGrant.Granted = ask.Take
	tbl.refilled(k, pending, refillGrant, t0.Add(time.Millisecond), nil)
	select {
	case <-pending.done:
	default:
		t.Fatal("the refill is back, its waiters still wait")
	}
	for range ask.Take {
		if _, ok, _ := tbl.take(k, t0.Add(time.Millisecond), 7, true); !ok {
			t.Fatalf("a waiter found the refill's grant of %d spent", ask.Take)
		}
	}
	// (its last takes had the next refill go)
	if _, ok, refill := tbl.take(k, t0.Add(time.Millisecond), 7, true); ok || refill == pending {
		t.Fatalf("spent after the refill: admitted %v, given the refill that came back: %v", ok, refill == pending)
	}
}

// A lease is refilled early enough for the refill to be back before it is
// spent, however long refills take: once what is left lasts less, at the
// recent pace, than four times what they have been taking, not only at a
// third left (within what it may hold: TestSeveralRefillsOnTheWay).
func TestRefillRunway(t *testing.T) {
	k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 100000, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	lease := func(granted int64) store.Decision {
		return store.Decision{Allowed: true, Limit: 100000, Remaining: 90000, Granted: granted, Lease: 10 * time.Second, Staggered: true}
	}
	for _, c := range []struct {
		took      time.Duration
		refillsAt int // the take, from the grant's, that has the next refill go
	}{
		// 19 left when it is back, 83 with it: at 21, a third of 64
		{took: time.Millisecond, refillsAt: 63},
		// 10 left when it is back, 74 with it: at 39, what 1 a
		// millisecond (over the last 48–63 requests) uses in four times
		// 10 ms (the 54th, at a third, were it not for the runway)
		{took: 10 * time.Millisecond, refillsAt: 36},
		// none left, 64 with it: what 1 a millisecond uses in four times
		// 20 ms is 80, so at the second take, the first once the recent
		// pace is known (the 64th request)
		{took: 20 * time.Millisecond, refillsAt: 2},
	} {
		tbl := newLeaseTable(64, store.SlidingLog)
		tbl.put(k, lease(64), store.Ask{Take: 64, Spread: 10 * time.Second}, t0, 0, t0)
		now := t0
		// nextRefill takes one request a millisecond until one has a
		// refill go (started), and says which.
		var started *refill
		nextRefill := func() int {
			for i := 1; i <= 64; i++ {
				now = now.Add(time.Millisecond)
				if _, ok, refill := tbl.take(k, now, 0, true); !ok {
					t.Fatalf("refill after %v: take %d found the lease spent", c.took, i)
				} else if refill != nil {
					started = refill
					return i
				}
			}
			t.Fatalf("refill after %v: none went", c.took)
			return 0
		}
		if i := nextRefill(); i != 43 {
			t.Fatalf("first refill at take %d, want 43 (21 of 63 left)", i)
		}
		asked := now
		tbl.wantAhead(k, started, asked, 0)
		for now.Before(asked.Add(c.took)) {
			now = now.Add(time.Millisecond)
			if _, ok, _ := tbl.take(k, now, 0, true); !ok {
				t.Fatalf("took past the lease while the refill was on its way")
			}
		}
		tbl.refilled(k, started, lease(64), now, nil)
		// The pace from its grant on counts its asking request and those
		// admitted while it was on its way.
		if used, want := tbl.shard(k).leases[k].used, int64(c.took/time.Millisecond)+1; used != want {
			t.Fatalf("after a refill that took %v: %d requests in the pace since its grant, want %d", c.took, used, want)
		}
		if i := nextRefill(); i != c.refillsAt {
			t.Fatalf("after a refill that took %v, the next at take %d, want %d", c.took, i, c.refillsAt)
		}
	}

	// Two requests a millisecond after a grant are no pace: with refills
	// taking 20 ms, the lease of 64 is not refilled for them.
	tbl := newLeaseTable(64, store.SlidingLog)
	tbl.put(k, lease(64), store.Ask{Take: 64, Spread: 10 * time.Second}, t0, 0, t0)
	tbl.shard(k).leases[k].refillTook = 20 * time.Millisecond
	for i := range 2 {
		if _, _, refill := tbl.take(k, t0.Add(time.Millisecond), 0, true); refill != nil {
			t.Fatalf("take %d of 63, a millisecond after the grant: a refill went", i+1)
		}
	}
}

// When refills take longer than a lease lasts, several go at once: those
// on their way count as held, and another goes while what is left with
// them would not last refillRunway times what refills take, as long as
// the gateway then holds no more than holdMost (twice the configured
// lease, or a hundredth of the limit if more), and never more than
// refillsOnTheWay at once.
func TestSeveralRefillsOnTheWay(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	lease := func(granted int64) store.Decision {
		return store.Decision{Allowed: true, Limit: 100000, Remaining: 90000, Granted: granted, Lease: 10 * time.Second, Staggered: true}
	}
	// leasedAtAMillisecond is a table of at most max a lease, holding a
	// grant of 64 of limit's taken a request a millisecond until its
	// refill at a third left came back at once (84 held), with a recent
	// pace known (the 64th request) and refills then taking took. The
	// refills that takes starts are asked for at once and left on their
	// way; it says how many went.
	leasedAtAMillisecond := func(max, limit int64, took time.Duration) (held func() int64, takes func(count int) (refills int)) {
		k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: limit, Window: time.Hour}}
		tbl := newLeaseTable(max, store.SlidingLog)
		tbl.put(k, lease(64), store.Ask{Take: 64, Spread: 10 * time.Second}, t0, 0, t0)
		now := t0
		held = func() int64 {
			l := tbl.shard(k).leases[k]
			return l.left(instantOf(now)) + l.onTheWay(nil)
		}
		takes = func(count int) (refills int) {
			for range count {
				now = now.Add(time.Millisecond)
				_, ok, refill := tbl.take(k, now, 0, true)
				if !ok {
					break
				}
				if refill != nil {
					tbl.wantAhead(k, refill, now, 0)
					refills++
				}
			}
			return refills
		}
		if n := takes(43); n != 1 {
			t.Fatalf("%d refills in 43 takes of 63, want 1", n)
		}
		tbl.refilled(k, tbl.shard(k).leases[k].refills[0], lease(64), now, nil)
		tbl.shard(k).leases[k].refillTook = took
		if n := takes(20); n != 0 {
			t.Fatalf("%d refills before a recent pace is known, want none", n)
		}
		return held, takes
	}

	// What 1 a millisecond uses in four times 100 ms is about 400, but a
	// lease of at most 64 of a limit of 10,000 holds at most 128: one
	// refill goes with 63 left, and a second would hold 62 + 64 + 64.
	// However slow refills get.
	held, takes := leasedAtAMillisecond(64, 10_000, 100*time.Millisecond)
	if n := takes(10); n != 1 {
		t.Fatalf("%d refills in 10 takes with refills taking 100 ms, want 1", n)
	}
	if n := takes(100); n != 0 || held() > 2*64 {
		t.Fatalf("%d more refills, %d held with what is on its way; want none, at most 128", n, held())
	}

	// Of a limit of 100,000, a hundredth is more: 63, 62+64, 61+128 and
	// 60+192 would not last 400 ms, nor would 59+256, but no more than
	// four go at once.
	_, takes = leasedAtAMillisecond(64, 100_000, 100*time.Millisecond)
	if n := takes(10); n != refillsOnTheWay {
		t.Fatalf("%d refills in 10 takes with refills taking 100 ms, want %d", n, refillsOnTheWay)
	}

	// With room for larger leases (the first refill asked for 128, so the
	// next ask for 256): 63 and 62+256 would not last 400 ms, 61+512 would.
	_, takes = leasedAtAMillisecond(1024, 100_000, 100*time.Millisecond)
	if n := takes(10); n != 2 {
		t.Fatalf("%d refills in 10 takes with refills taking 100 ms, want 2", n)
	}
}

// Steady traffic under sliding_log uses every request it leases but the
// last lease's rest: refilled ahead of time, the refill's early deadlines
// are used first, while the rest of the old lease waits (its deadlines are
// later); taken in order of grant instead, the refill's first requests
// would lapse each time.
func TestRefilledLeasesDoNotLapse(t *testing.T) {
	k := leaseKey{kind: 's', subject: "192.0.2.1", policy: store.Policy{Limit: 1_000_000, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	tbl := newLeaseTable(64, store.SlidingLog)
	calls, granted, admitted := steadyTraffic(tbl, k, t0, t0.Add(200*time.Second), 10*time.Millisecond, false) // 20,000
	if unused := granted - admitted; unused > 64 || calls > 20_000/40 {
		t.Fatalf("%d store calls, %d leased, %d admitted from leases: %d unused", calls, granted, admitted, unused)
	}
}

// Under sliding_window every request of a lease ends with its window. A
// key that keeps its pace is leased what that pace uses until the window
// ends, refilled only when what it holds would run out before then, and
// then by what it lacks; so little ends unused with each window. Before,
// a key seen every 1.5s was refilled at a third left, for the rest of the
// window on top of what it held, and a third of what it leased ended
// unused.
func TestWindowLeasesEndWithTheirWindow(t *testing.T) {
	for _, c := range []struct {
		name          string
		every         time.Duration
		pairs         bool          // each request followed 10ms later by another
		into          time.Duration // into its window when the traffic starts
		calls, unused int64         // at most, in 20 one-minute windows
	}{
		// one call a window, and a few to grow the lease (was 44 calls, 203
		// unused; 2 unused while a refill ahead counted its request twice)
		{"seen every 1.5s", 1500 * time.Millisecond, false, 0, 20 + 8, 1},
		{"seen every 1.5s from late in a window", 1500 * time.Millisecond, false, 50 * time.Second, 20 + 8, 1},
		// two at once, as from a client's two connections: a lease sized
		// for the pace is spent a moment before its window ends, and the
		// top-up asked then is small; it does not shrink the size the next
		// window's lease may grow from (was 83 calls: 3 to 5 a window)
		{"two every 3s from late in a window", 3 * time.Second, true, 50 * time.Second, 2*20 + 8, 20},
		// one call per 64 requests (was 1,905 calls, 1,599 unused; 20 unused
		// while a refill ahead counted its request twice)
		{"100 a second", 10 * time.Millisecond, false, 0, 20*6000/64 + 40, 10},
	} {
		k := leaseKey{kind: 's', subject: "192.0.2.1", policy: store.Policy{Limit: 1_000_000, Window: time.Minute}}
		tbl := newLeaseTable(64, store.SlidingWindow)
		t0 := time.Unix(1_800_000_000, 0).Add(c.into)
		calls, granted, admitted := steadyTraffic(tbl, k, t0, t0.Add(20*time.Minute), c.every, c.pairs)
		held := tbl.shard(k).leases[k].left(instantOf(t0.Add(20 * time.Minute)))
		if unused := granted - admitted - held; calls > c.calls || unused > c.unused {
			t.Errorf("%s: %d store calls, %d leased, %d admitted from leases, %d held: %d unused", c.name, calls, granted, admitted, held, unused)
		}
	}
}

// steadyTraffic sends k a request every interval from t0 until end
// through tbl (oneRequest), with pairs another 10ms after each. It returns
// the store calls made, the requests leased beyond the asking ones, and
// the requests admitted from leases.
func steadyTraffic(tbl *leaseTable, k leaseKey, t0, end time.Time, every time.Duration, pairs bool) (calls, granted, admitted int64) {
	for now := t0; now.Before(end); now = now.Add(every) {
		at := []time.Time{now}
		if pairs {
			at = append(at, now.Add(10*time.Millisecond))
		}
		for _, now := range at {
			fromLease, called, leased := oneRequest(tbl, k, now)
			if fromLease {
				admitted++
			}
			if called {
				calls++
			}
			granted += leased
		}
	}
	return calls, granted, admitted
}

// oneRequest is a request's work in tbl at now, with a store that answers
// at once: a refill ahead comes back before the next request, and a
// request that take turns away asks the store itself. It reports whether
// the request was admitted from a lease, whether a store call was made,
// and how many requests it leased beyond the asking one.
func oneRequest(tbl *leaseTable, k leaseKey, now time.Time) (fromLease, called bool, leased int64) {
	_, ok, refill := tbl.take(k, now, 0, true)
	switch {
	case !ok:
		return false, true, grantFromInstantStore(tbl, k, tbl.want(k, now, 0), now) - 1
	case refill != nil:
		ask, worth := tbl.wantAhead(k, refill, now, 0)
		if !worth {
			refill.end(nil)
			break
		}
		tbl.refilled(k, refill, instantDecision(tbl, k, ask, now), now, nil)
		return true, true, ask.Take
	}
	return true, false, 0
}

// grantFromInstantStore grants at once all that ask asks for k at now
// (instantDecision) and returns how many requests it granted.
func grantFromInstantStore(tbl *leaseTable, k leaseKey, ask store.Ask, now time.Time) int64 {
	tbl.put(k, instantDecision(tbl, k, ask, now), ask, now, 0, now)
	return ask.Take
}

// instantDecision grants all that ask asks for k at now: a sliding_window
// lease to the end of its window (windows aligned to the zero time), at
// most a minute, a sliding_log one staggered over the spread asked.
func instantDecision(tbl *leaseTable, k leaseKey, ask store.Ask, now time.Time) store.Decision {
	n := ask.Take
	d := store.Decision{Allowed: true, Limit: k.policy.Limit, Remaining: k.policy.Limit - n, Granted: n}
	if tbl.algorithm == store.SlidingLog {
		d.Lease, d.Staggered = ask.Spread, d.Leased(ask.Ahead) > 0
	} else {
		d.Reset = now.Truncate(k.policy.Window).Add(k.policy.Window)
		d.Lease = min(d.Reset.Sub(now), store.MaxLease)
	}
	return d
}

// leasedSite is a site whose keys take leases of up to 64 from a limit
// no test reaches.
const leasedSite = `
	keygate {
		rate_limit 1000000 24h
		lease 64
	}
	reverse_proxy {upstream}`

// heldAfterBusyTraffic sends 200 requests (with headers) to a gateway
// with leases, whose only traffic they are, lets a refill on its way come
// back, and returns how many requests the gateway holds leased: granted
// less admitted, none lapsing in a sliding window's lease of a minute.
func heldAfterBusyTraffic(t *testing.T, g *gateway, headers ...string) int {
	t.Helper()
	busyTraffic(t, g, headers...)
	granted := metricstest.Value(t, adminAddr, "keygate_lease_granted_requests_total")
	admitted := metricstest.Value(t, adminAddr, "keygate_lease_admitted_requests_total")
	if held := int(granted - admitted); held >= 2 {
		return held
	}
	t.Fatalf("%v leased, %v admitted: too few held to test", granted, admitted)
	return 0
}

// waitForTheRefill pauses srv (resumed when the test ends), has the held
// requests that g's lease holds served (with headers), each admitted, then
// sends waiters more, which find the lease spent, and returns once all of
// them wait for its refill; their responses come once srv resumes.
func waitForTheRefill(t *testing.T, g *gateway, srv *redistest.Server, held, waiters int, headers ...string) <-chan response {
	t.Helper()
	waitsBefore := refillWaits(t)
	srv.Pause()
	t.Cleanup(srv.Resume)
	for i := range held {
		if r := g.get("/", headers...); r.status != http.StatusOK {
			t.Fatalf("held request %d of %d: %d %s", i+1, held, r.status, r.body)
		}
	}
	responses := make(chan response, waiters)
	for range waiters {
		go func() { responses <- g.get("/", headers...) }()
	}
	for deadline := time.Now().Add(time.Second); refillWaits(t) < waitsBefore+waiters; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests that found the lease spent wait for its refill", refillWaits(t)-waitsBefore, waiters)
		}
	}
	return responses
}

// refillWaits is how many requests waited for their lease's refill.
func refillWaits(t *testing.T) int {
	return int(metricstest.Value(t, adminAddr, "keygate_lease_refill_waits_total"))
}

// busyTraffic sends 200 requests (with headers) to a gateway with leases,
// each to be admitted, and lets a refill on its way come back.
func busyTraffic(t *testing.T, g *gateway, headers ...string) {
	t.Helper()
	for i := range 200 {
		if r := g.get("/", headers...); r.status != http.StatusOK {
			t.Fatalf("request %d: %d %s", i+1, r.status, r.body)
		}
	}
	time.Sleep(100 * time.Millisecond)
}

// A refill ahead validates the key as every store call does: one that
// finds the key no longer valid drops the lease, so the key's next request
// asks the store and is refused, rather than using up what is held. (The
// key is disabled here behind the gateways' back, without the epoch that
// normally stops its leases first.)
func TestRefillDropsTheLeaseOfAnInvalidKey(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, leasedSite, "")
	k := generate(t, "--name", "dropped")
	held := heldAfterBusyTraffic(t, g, bearer(k.Key)...)

	rdb := srv.Client(t)
	if err := rdb.HSet(context.Background(), "keygate:{k:"+k.ID+"}", "e", "0").Err(); err != nil {
		t.Fatal(err)
	}
	served := 0
	for g.get("/", bearer(k.Key)...).status == http.StatusOK {
		served++
		time.Sleep(5 * time.Millisecond) // time for a refill to come back
	}
	// The refill goes when a third of the last grant is left.
	if served >= held {
		t.Fatalf("the disabled key was served all %d held; its refill should have dropped the lease", held)
	}
	t.Logf("disabled behind the epoch's back: %d of %d held served", served, held)
}

// TestGrantsHoldNoPointers: a gateway holds many grants, and an array of
// them that holds no pointer is one the GC never scans (instant, not
// time.Time, whose location is a pointer).
func TestGrantsHoldNoPointers(t *testing.T) {
	grantType := reflect.TypeFor[grant]()
	for i := range grantType.NumField() {
		if f := grantType.Field(i); holdsPointers(f.Type) {
			t.Errorf("grant.%s (%s) holds a pointer", f.Name, f.Type)
		}
	}
}

// TestLeasePointersComeFirst: the GC scans an object up to its last
// pointer, so a lease's pointers (its two slices) come first and nothing
// after them holds one; a time.Time would, by its location.
func TestLeasePointersComeFirst(t *testing.T) {
	leaseType := reflect.TypeFor[lease]()
	for i := range leaseType.NumField() {
		if f := leaseType.Field(i); i >= 2 && holdsPointers(f.Type) {
			t.Errorf("lease.%s (%s) holds a pointer after the slices", f.Name, f.Type)
		}
	}
}

func holdsPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Struct:
		for i := range t.NumField() {
			if holdsPointers(t.Field(i).Type) {
				return true
			}
		}
		return false
	case reflect.Array:
		return holdsPointers(t.Elem())
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	}
	return true // pointers, strings, slices, maps, channels, funcs, interfaces
}

// Requests that find a lease spent, no refill on its way (as every busy
// key's sliding_window lease at its window's end), ask the store for a
// lease one at a time: while one is on its way the others ask for their
// own request only, so a gateway does not hold a lease per request in
// flight (64 connections would hold 64 leases), and the size the next
// lease may double stays.
func TestOneRequestAtATimeAsksForALease(t *testing.T) {
	tbl := newLeaseTable(64, store.SlidingWindow)
	k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 1_000_000, Window: time.Minute}}
	t0 := time.Unix(1_800_000_000, 0).Truncate(time.Minute)
	end := t0.Add(time.Minute) // the window's, and its leases'
	steadyTraffic(tbl, k, t0, end, 10*time.Millisecond, false)

	now := end.Add(time.Millisecond)
	if _, ok, r := tbl.take(k, now, 0, true); ok || r != nil {
		t.Fatalf("take after the window's end: ok %v, refill %v; want the lease spent, none on its way", ok, r != nil)
	}
	first := tbl.want(k, now, 0)
	if first.Take != 64 {
		t.Fatalf("first request asks for %d, want a full lease of 64", first.Take)
	}
	for i := range 3 {
		if ask := tbl.want(k, now.Add(time.Duration(i)*time.Millisecond), 0); ask.Take != 1 {
			t.Fatalf("request %d while the lease is on its way asks for %d, want 1", i+2, ask.Take)
		}
	}
	// a lease asked for whose call failed (no grant comes back) holds the
	// others to one for askHold only
	if ask := tbl.want(k, now.Add(askHold), 0); ask.Take != 64 {
		t.Fatalf("askHold after a lease asked for that never came back: %d, want a lease", ask.Take)
	}
	now = now.Add(askHold)
	first = store.Ask{Take: 64}

	// one of those comes back first: it does not shrink the lease's size
	one := store.Ask{Take: 1}
	tbl.put(k, instantDecision(tbl, k, one, now), one, now, 0, now.Add(2*time.Millisecond))
	tbl.put(k, instantDecision(tbl, k, first, now), first, now, 0, now.Add(3*time.Millisecond))
	sh := tbl.shard(k)
	if l := sh.leases[k]; l.size != 64 || l.asking != 0 {
		t.Fatalf("after the grants: size %d, asking %v; want 64 and none", l.size, l.asking)
	}
}

// The table holds at most maxLeasesPerShard leases a shard: a flood of new
// subjects beyond that gets the store's decisions, no leases; once the
// flood's leases have ended, sweeps make room again.
// A lease whose store said the limit is reached reports, with its last
// request (Remaining 0), when the store admits one again: the reset of the
// grant that said so, though another grant reported a window's end with
// room left (an overtaken one, here), or a refusal came since.
func TestLeaseAtTheLimitResetsWhenTheStoreAdmitsAgain(t *testing.T) {
	k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 100, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	windowEnd, admitsAgain := t0.Add(time.Hour), t0.Add(90*time.Minute)
	grant := func(remaining int64, reset time.Time) store.Decision {
		return store.Decision{Allowed: true, Limit: 100, Remaining: remaining, Granted: 3, Lease: time.Minute, Reset: reset}
	}
	lastReset := func(tbl *leaseTable, at time.Time) time.Time {
		t.Helper()
		var last store.Decision
		for {
			d, ok, _ := tbl.take(k, at, 0, true)
			if !ok {
				break
			}
			last = d
		}
		if last.Remaining != 0 {
			t.Fatalf("the lease's last request: %+v, want Remaining 0", last)
		}
		return last.Reset
	}

	// asked later, answered first, with room left; then the earlier ask,
	// which the store counted first, back at the limit (its weighted
	// count was higher then)
	tbl := newLeaseTable(8, store.SlidingWindow)
	tbl.put(k, grant(5, windowEnd), store.Ask{Take: 3}, t0.Add(10*time.Millisecond), 0, t0.Add(10*time.Millisecond))
	tbl.put(k, grant(0, admitsAgain), store.Ask{Take: 3}, t0, 0, t0.Add(20*time.Millisecond))
	if got := lastReset(tbl, t0.Add(30*time.Millisecond)); !got.Equal(admitsAgain) {
		t.Errorf("overtaken grant at the limit: the last request resets at %v, want %v", got, admitsAgain)
	}

	// a refusal while the lease holds requests
	tbl = newLeaseTable(8, store.SlidingWindow)
	tbl.put(k, grant(5, windowEnd), store.Ask{Take: 3}, t0, 0, t0)
	refused := store.Decision{Limit: 100, Reset: admitsAgain, RetryAfter: 90 * time.Minute}
	tbl.put(k, refused, store.Ask{Take: 3}, t0.Add(10*time.Millisecond), 0, t0.Add(10*time.Millisecond))
	if got := lastReset(tbl, t0.Add(20*time.Millisecond)); !got.Equal(admitsAgain) {
		t.Errorf("after a refusal: the last request resets at %v, want %v", got, admitsAgain)
	}
}

func TestLeaseTableIsBounded(t *testing.T) {
	tbl := newLeaseTable(64, store.SlidingWindow)
	policy := store.Policy{Limit: 100, Window: time.Minute}
	t0 := time.Unix(1_800_000_000, 0)
	flood := func(from, n int, at time.Time) {
		for i := range n {
			k := leaseKey{kind: 's', subject: "ip6:2001:db8:" + strconv.Itoa(from+i) + "::/64", policy: policy}
			one := store.Ask{Take: 1}
			tbl.put(k, instantDecision(tbl, k, one, at), one, at, 0, at)
		}
	}
	held := func() (n int) {
		for i := range tbl.shards {
			if l := len(tbl.shards[i].leases); l > maxLeasesPerShard {
				t.Fatalf("shard %d holds %d leases, more than %d", i, l, maxLeasesPerShard)
			}
			n += len(tbl.shards[i].leases)
		}
		return n
	}
	flood(0, 3*maxLeasesPerShard*leaseShards, t0)
	if n := held(); n < maxLeasesPerShard*leaseShards*9/10 {
		t.Fatalf("%d leases held after the flood, want the table about full", n)
	}
	// the flood's leases ended with their window; two minutes on, new
	// subjects get leases again
	later := t0.Add(3 * time.Minute)
	flood(1_000_000, 2*sweepEvery*leaseShards, later)
	recent := 0
	for i := range tbl.shards {
		for _, l := range tbl.shards[i].leases {
			if l.since >= instantOf(later) {
				recent++
			}
		}
	}
	if recent < sweepEvery*leaseShards {
		t.Fatalf("%d leases of the later subjects, want the room the sweeps made", recent)
	}
	held()
}

// A Redis that lost its data (FLUSHALL here, a restart without persistence
// alike) takes its keys with it within the epoch's second, leases or not:
// the epoch starts afresh at a random value, not at the 0 that every lease
// was granted under while no key had changed.
func TestLeasesEndWithAFlushedRedis(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, leasedSite)
	auth := bearer(generate(t, "--name", "flushed").Key)
	heldAfterBusyTraffic(t, g, auth...)
	if err := srv.Client(t).FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(epochFresh + epochPollEvery)
	wantProblem(t, g.get("/", auth...), http.StatusUnauthorized, "Invalid API key")
}

// A request that asks the store for a lease and whose client leaves before
// the answer does not drop the grant: Redis counts the lease whether or not
// its answer is awaited, and a grant dropped would be requests counted and
// never admitted. The call goes on (bounded by the store's timeout) and
// the gateway keeps what it was granted. Two keys' requests at once, so
// that one of them waits in a shared pipeline (the other has the direct
// line, whose read a leaving client never cut short); sliding_log, so
// that once its lease has lapsed a key's next request asks for a full one
// itself, with no refill on its way.
func TestALeaseAskedForOutlivesItsClient(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, `
	keygate {
		rate_limit 1000000 1h
		algorithm sliding_log
		lease 64
	}
	reverse_proxy {upstream}`, "timeout 5s")
	auths := [][]string{bearer(generate(t, "--name", "left-1").Key), bearer(generate(t, "--name", "left-2").Key)}
	for _, auth := range auths {
		busyTraffic(t, g, auth...)
	}
	time.Sleep(1500 * time.Millisecond) // the leases' requests lapsed (a spread of 1s at that pace)
	srv.Pause()
	var wg sync.WaitGroup
	for _, auth := range auths {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, g.base+"/", nil)
			req.Header.Set(auth[0], auth[1])
			impatient := &http.Client{Timeout: 300 * time.Millisecond}
			if resp, err := impatient.Do(req); err == nil {
				resp.Body.Close()
				t.Errorf("with the store stalled: %d before the client left", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	srv.Resume()
	time.Sleep(500 * time.Millisecond) // the grants come back
	calls := metricstest.StoreCalls(t, adminAddr, "check")
	for i, auth := range auths {
		if r := g.get("/", auth...); r.status != http.StatusOK {
			t.Fatalf("key %d: %d", i+1, r.status)
		}
	}
	if n := metricstest.StoreCalls(t, adminAddr, "check") - calls; n != 0 {
		t.Fatalf("%d store calls for two keys whose leases were granted while their clients left, want 0", n)
	}
}

// A request that asked for itself alone, while another's lease was on its
// way, and whose answer came back after that lease, joins it without
// taking over its bookkeeping: the lease is still refilled ahead once a
// third of it is left. (Taken over, the lease counted as a grant of one,
// a third of which is never left: no refill went ahead, and the lease ran
// dry under its requests.) Nor does the refill not worth a call at the end
// of the window before hold the new window's first refill ahead back.
func TestAOneRequestGrantAfterALeaseKeepsItsRefillAhead(t *testing.T) {
	for _, alg := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		t.Run(string(alg), func(t *testing.T) {
			tbl := newLeaseTable(64, alg)
			k := leaseKey{kind: 'k', subject: "id", policy: store.Policy{Limit: 1_000_000, Window: time.Minute}}
			t0 := time.Unix(1_800_000_000, 0).Truncate(time.Minute)
			end := t0.Add(time.Minute)
			steadyTraffic(tbl, k, t0, end, 10*time.Millisecond, false)

			now := end.Add(time.Millisecond)
			tbl.take(k, now, 0, true)
			first := tbl.want(k, now, 0)
			later := now.Add(time.Millisecond)
			one := tbl.want(k, later, 0)
			if first.Take < 2 || one.Take != 1 {
				t.Fatalf("asks %+v then %+v; want a lease, then one request", first, one)
			}
			tbl.put(k, instantDecision(tbl, k, first, now), first, now, 0, now.Add(2*time.Millisecond))
			tbl.put(k, instantDecision(tbl, k, one, later), one, later, 0, later.Add(2*time.Millisecond))

			at := later.Add(3 * time.Millisecond)
			for taken := 1; ; taken++ {
				_, ok, r := tbl.take(k, at, 0, true)
				if !ok {
					t.Fatalf("the lease of %d ran dry after %d requests with no refill ahead", first.Take-1, taken-1)
				}
				if r != nil {
					if left := first.Take - 1 - int64(taken); left*refillAhead > first.Take {
						t.Fatalf("refilled ahead with %d of %d left, want a third", left, first.Take)
					}
					return
				}
				at = at.Add(10 * time.Millisecond)
			}
		})
	}
}

// A lease asked for holds the others' asks to one for as long as its call
// may take, the store's timeout, if that is over askHold: a call slower
// than askHold but within the timeout still brings its lease back, and
// each request asking for a lease of its own meanwhile would bring one
// too (an anonymous client has no epoch to stop them).
func TestALeaseAskedForHoldsOthersForTheStoresTimeout(t *testing.T) {
	var tables leaseTables
	tbl := tables.get(64, store.SlidingWindow, 5*time.Second)
	if again := tables.get(64, store.SlidingWindow, 5*time.Second); again != tbl {
		t.Fatal("a second get made another table")
	}
	k := leaseKey{kind: 's', subject: "ip:192.0.2.1", policy: store.Policy{Limit: 1_000_000, Window: time.Minute}}
	t0 := time.Unix(1_800_000_000, 0).Truncate(time.Minute)
	end := t0.Add(time.Minute)
	steadyTraffic(tbl, k, t0, end, 10*time.Millisecond, false)
	now := end.Add(time.Millisecond)
	if first := tbl.want(k, now, 0); first.Take < 2 {
		t.Fatalf("first ask %+v, want a lease", first)
	}
	if ask := tbl.want(k, now.Add(4*time.Second), 0); ask.Take != 1 {
		t.Fatalf("4 s on, within the store's 5 s timeout, another asks for %d, want 1", ask.Take)
	}
	if ask := tbl.want(k, now.Add(5*time.Second), 0); ask.Take < 2 {
		t.Fatalf("after the store's timeout another asks for %d, want a lease", ask.Take)
	}
}

// A table of leases lives while a handler uses it: through a reload that
// keeps the handlers' lease and algorithm (the new config's handlers get
// it before the old one's let go), not past its last user (a reload that
// changes them), whose leases nothing would use or sweep again.
func TestLeaseTablesGoWithTheirLastUser(t *testing.T) {
	var tables leaseTables
	old := tables.get(64, store.SlidingWindow, 0)
	if again := tables.get(64, store.SlidingWindow, 0); again != old {
		t.Fatal("a handler of the same lease and algorithm got another table")
	}
	tables.release(64, store.SlidingWindow)
	if kept := tables.get(64, store.SlidingWindow, 0); kept != old {
		t.Fatal("the table went while a handler still used it")
	}
	tables.release(64, store.SlidingWindow)
	tables.release(64, store.SlidingWindow)
	if fresh := tables.get(64, store.SlidingWindow, 0); fresh == old {
		t.Fatal("the table outlived its last user")
	}
}

// Routes of one limit share the store's counter, and so the gateway's
// leases of it: a key's requests through two such routes, alternating,
// are all admitted up to the limit, the headers counting down one by one
// across both. (With a lease table per route, what one route leased the
// other could not admit from: the key was refused before its limit, and
// each route counted down its own.)
func TestRoutesOfOneLimitShareTheGatewaysLeases(t *testing.T) {
	const limited = `
		keygate {
			rate_limit 20 1h
			lease 8
		}
		reverse_proxy {upstream}`
	g := startRedisGateway(t, "", "handle /a* {"+limited+"\n\t}\n\thandle {"+limited+"\n\t}")
	k := generate(t, "--name", "two-routes")
	for i := range 20 {
		path := []string{"/a", "/b"}[i%2]
		r := g.get(path, bearer(k.Key)...)
		if r.status != http.StatusOK {
			t.Fatalf("request %d (%s): %d %s", i+1, path, r.status, r.body)
		}
		if rem := r.header.Get("X-RateLimit-Remaining"); rem != strconv.Itoa(20-1-i) {
			t.Fatalf("request %d (%s): X-RateLimit-Remaining %s, want %d", i+1, path, rem, 20-1-i)
		}
	}
	if r := g.get("/b", bearer(k.Key)...); r.status != http.StatusTooManyRequests {
		t.Fatalf("request 21: %d, want 429", r.status)
	}
}
