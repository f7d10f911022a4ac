package keygate

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/caddymodule/store"
)

func TestLeaseTable(t *testing.T) {
	tbl := newLeaseTable(8)
	k := leaseKey{'k', "id", store.Policy{Limit: 100, Window: time.Hour}}
	t0 := time.Unix(1_800_000_000, 0)
	grant := func(granted, remaining int64, at time.Time) store.Decision {
		return store.Decision{Allowed: true, Limit: 100, Remaining: remaining, Granted: granted, Lease: time.Second, Reset: at.Add(time.Hour)}
	}

	if n := tbl.want(k, t0); n != 1 {
		t.Fatalf("first want %d, want 1", n)
	}
	if _, ok := tbl.take(k, t0); ok {
		t.Fatal("took from a lease nobody granted")
	}
	d := tbl.put(k, grant(1, 99, t0), 1, t0)
	if d.Remaining != 99 {
		t.Fatalf("remaining %d", d.Remaining)
	}
	// used up within its second: the next one doubles, up to the maximum
	for _, want := range []int64{2, 4, 8, 8} {
		n := tbl.want(k, t0)
		if n != want {
			t.Fatalf("want %d, expected %d", n, want)
		}
		tbl.put(k, grant(n, 50, t0), n, t0)
		for range n - 1 {
			if _, ok := tbl.take(k, t0); !ok {
				t.Fatal("lease ran out early")
			}
		}
		if _, ok := tbl.take(k, t0); ok {
			t.Fatal("took past the lease")
		}
	}
	// headers count the lease as the caller's: remaining falls by one a request
	tbl.put(k, grant(4, 40, t0), 4, t0)
	for want := int64(42); want >= 40; want-- {
		d, ok := tbl.take(k, t0)
		if !ok || d.Remaining != want {
			t.Fatalf("take: %+v %v, want remaining %d", d, ok, want)
		}
	}
	// a lease ends after its TTL, and the next is sized by what was used
	tbl.put(k, grant(8, 30, t0), 8, t0)
	tbl.take(k, t0)
	tbl.take(k, t0)
	later := t0.Add(time.Second)
	if _, ok := tbl.take(k, later); ok {
		t.Fatal("took from an ended lease")
	}
	if n := tbl.want(k, later); n != 3 {
		t.Fatalf("after an unused lease, want %d; expected 3 (what was used)", n)
	}
	// two concurrent grants are merged, ending with the earlier one
	tbl.put(k, grant(3, 20, later), 3, later)
	tbl.put(k, store.Decision{Allowed: true, Limit: 100, Remaining: 17, Granted: 3, Lease: 200 * time.Millisecond}, 3, later)
	for range 4 {
		if _, ok := tbl.take(k, later.Add(100*time.Millisecond)); !ok {
			t.Fatal("merged lease ran out early")
		}
	}
	if _, ok := tbl.take(k, later.Add(250*time.Millisecond)); ok {
		t.Fatal("merged lease outlived the earlier end")
	}
	// a refusal is passed on as it is
	if d := tbl.put(k, store.Decision{Limit: 100, RetryAfter: time.Second}, 1, later); d.Allowed || d.RetryAfter != time.Second {
		t.Fatalf("refusal became %+v", d)
	}
}

// With leases, a key's requests mostly skip the store, the headers still
// count down one by one, and a disabled key stops within store.LeaseTTL.
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
	// leases of 1, 2, 4 … 64 requests: 7 round trips for up to 127
	// requests, more only if a lease ended unused on a slow machine
	if calls := storeCalls(t, "check"); calls > requests/4 {
		t.Fatalf("%d store round trips for %d requests", calls, requests)
	}

	mustCLI(t, "disable", "leased")
	deadline := time.Now().Add(store.LeaseTTL + time.Second)
	for g.get("/", bearer(k.Key)...).status != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatalf("disabled key still admitted %v after disabling", store.LeaseTTL+time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// storeCalls reads keygate_store_duration_seconds_count{op} from /metrics.
func storeCalls(t *testing.T, op string) int {
	t.Helper()
	resp, err := client.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	prefix := `keygate_store_duration_seconds_count{op="` + op + `"} `
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("metric %q", sc.Text())
			}
			return n
		}
	}
	t.Fatalf("/metrics has no %s", prefix)
	return 0
}
