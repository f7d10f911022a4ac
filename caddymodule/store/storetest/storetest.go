// Package storetest is the conformance suite every store.Store must pass, so
// the Redis and embedded stores cannot drift apart.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
)

// Run runs the suite. open returns a fresh, empty store; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"CreateAndLookup", testCreateAndLookup},
		{"NamesAreUnique", testNamesAreUnique},
		{"IDsAreUnique", testIDsAreUnique},
		{"ConcurrentCreateOneName", testConcurrentCreateOneName},
		{"RenamesRacingDeletesLeaveNamesUsable", testRenameRacesDelete},
		{"RenameRotateDisableDelete", testLifecycle},
		{"StaleRevisionGetsFreshRecord", testFreshRecord},
		{"Expiry", testExpiry},
		{"SlidingWindowLimit", func(t *testing.T, s store.Store) { testLimit(t, s, store.SlidingWindow) }},
		{"SlidingLogLimit", func(t *testing.T, s store.Store) { testLimit(t, s, store.SlidingLog) }},
		{"SlidingLogNeverOveradmits", testSlidingLogConcurrent},
		{"SlidingWindowLeases", func(t *testing.T, s store.Store) { testLeases(t, s, store.SlidingWindow) }},
		{"SlidingLogLeases", func(t *testing.T, s store.Store) { testLeases(t, s, store.SlidingLog) }},
		{"KeyLimitCountsPerKey", testKeyLimit},
		{"ZonesCountApart", testZones},
		{"LastUsedIsRecorded", testLastUsed},
		{"EpochMovesWithEveryChange", testEpoch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { _ = s.Close() })
			tc.fn(t, s)
		})
	}
}

// NewKey returns a fresh enabled key record and its secret.
func NewKey(t testing.TB, name string) (store.Key, string) {
	t.Helper()
	g, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return store.Key{
		ID:        fmt.Sprintf("id-%s-%d", name, time.Now().UnixNano()),
		Name:      name,
		Prefix:    g.Display,
		Hash:      g.Hash,
		Roles:     []string{"upload"},
		Enabled:   true,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
	}, g.Secret
}

// MustCreate stores a new key named name (NewKey) and returns it with its
// secret, failing the test if the store refuses it.
func MustCreate(t testing.TB, s store.Store, name string) (store.Key, string) {
	t.Helper()
	k, secret := NewKey(t, name)
	if err := s.CreateKey(context.Background(), k); err != nil {
		t.Fatalf("CreateKey(%s): %v", name, err)
	}
	return k, secret
}

// SortedNames is the names of the keys s lists, sorted.
func SortedNames(t testing.TB, s store.Store) []string {
	t.Helper()
	keys, err := s.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		names = append(names, k.Name)
	}
	slices.Sort(names)
	return names
}

func check(t *testing.T, s store.Store, c store.Check) store.Verdict {
	t.Helper()
	v, err := s.CheckKey(context.Background(), c)
	if err != nil {
		t.Fatalf("CheckKey: %v", err)
	}
	return v
}

func testCreateAndLookup(t *testing.T, s store.Store) {
	ctx := context.Background()
	k, secret := MustCreate(t, s, "first")
	id, err := s.KeyIDByHash(ctx, apikey.Sum(secret))
	if err != nil || id != k.ID {
		t.Fatalf("KeyIDByHash = %q, %v; want %q", id, err, k.ID)
	}
	if _, err := s.KeyIDByHash(ctx, apikey.Sum("sk_nope")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown hash: err = %v, want ErrNotFound", err)
	}
	got, err := s.KeyByName(ctx, "first")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != k.ID || got.Hash != k.Hash || got.Prefix != k.Prefix || !got.Enabled ||
		len(got.Roles) != 1 || got.Roles[0] != "upload" || !got.CreatedAt.Equal(k.CreatedAt) || got.Revision < 1 {
		t.Fatalf("KeyByName = %+v, want %+v", got, k)
	}
	MustCreate(t, s, "second")
	keys, err := s.Keys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("Keys = %d keys, %v; want 2", len(keys), err)
	}
	if _, err := s.KeyByName(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("KeyByName(missing) err = %v", err)
	}
	v := check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash})
	if v.Status != store.KeyValid || v.Fresh == nil || v.Fresh.Name != "first" {
		t.Fatalf("CheckKey with no cached revision = %+v, want valid with the record", v)
	}
	v = check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash, Revision: v.Fresh.Revision})
	if v.Status != store.KeyValid || v.Fresh != nil {
		t.Fatalf("CheckKey with current revision = %+v, want valid without record", v)
	}
	if v := check(t, s, store.Check{KeyID: "no-such-id", Hash: k.Hash}); v.Status != store.KeyUnknown {
		t.Fatalf("CheckKey(unknown id) = %v", v.Status)
	}
}

// An id is one key's: a creation under another key's id (an import racing
// another, of the key since rotated and renamed) is refused, and leaves
// that key as it was.
func testIDsAreUnique(t *testing.T, s store.Store) {
	ctx := context.Background()
	k, secret := MustCreate(t, s, "owner")
	other, _ := NewKey(t, "intruder")
	other.ID = k.ID
	if err := s.CreateKey(ctx, other); !errors.Is(err, store.ErrIDTaken) {
		t.Fatalf("a key under another's id: %v, want ErrIDTaken", err)
	}
	if got, err := s.KeyByName(ctx, "owner"); err != nil || got.Hash != k.Hash {
		t.Fatalf("the key whose id it was: %+v, %v", got, err)
	}
	if v := check(t, s, store.Check{KeyID: k.ID, Hash: apikey.Sum(secret)}); v.Status != store.KeyValid {
		t.Fatalf("its secret: %v", v.Status)
	}
	if _, err := s.KeyByName(ctx, "intruder"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused key: %v, want ErrNotFound", err)
	}
	if _, err := s.KeyIDByHash(ctx, other.Hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused key's hash: %v, want ErrNotFound", err)
	}
	// the same key again (an import run twice at once) does not put back
	// what a change made in between
	if _, err := s.UpdateKey(ctx, "owner", func(k *store.Key) error { k.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, k); !errors.Is(err, store.ErrIDTaken) {
		t.Fatalf("the same key again: %v, want ErrIDTaken", err)
	}
	if got, err := s.KeyByName(ctx, "owner"); err != nil || got.Enabled {
		t.Fatalf("after the same key again: %+v, %v; want it still disabled", got, err)
	}
}

func testNamesAreUnique(t *testing.T, s store.Store) {
	MustCreate(t, s, "taken")
	k, _ := NewKey(t, "taken")
	if err := s.CreateKey(context.Background(), k); !errors.Is(err, store.ErrNameTaken) {
		t.Fatalf("second CreateKey(taken) err = %v, want ErrNameTaken", err)
	}
	MustCreate(t, s, "other")
	_, err := s.UpdateKey(context.Background(), "other", func(k *store.Key) error { k.Name = "taken"; return nil })
	if !errors.Is(err, store.ErrNameTaken) {
		t.Fatalf("rename onto a taken name err = %v, want ErrNameTaken", err)
	}
	if _, err := s.KeyByName(context.Background(), "other"); err != nil {
		t.Fatalf("failed rename lost the key: %v", err)
	}
}

func testConcurrentCreateOneName(t *testing.T, s store.Store) {
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			k, _ := NewKey(t, "race")
			err := s.CreateKey(context.Background(), k)
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, store.ErrNameTaken):
				t.Errorf("CreateKey: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d concurrent creations of one name succeeded, want 1", wins.Load())
	}
}

// A rename racing a deletion of the same key may go either way, but
// leaves each name either a key's, found under it, or free to create.
func testRenameRacesDelete(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := range 20 {
		from, to := fmt.Sprintf("from-%d", i), fmt.Sprintf("to-%d", i)
		MustCreate(t, s, from)
		var wg sync.WaitGroup
		wg.Go(func() {
			_, err := s.UpdateKey(ctx, from, func(k *store.Key) error { k.Name = to; return nil })
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("rename: %v", err)
			}
		})
		wg.Go(func() {
			if err := s.DeleteKey(ctx, from); err != nil && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("delete: %v", err)
			}
		})
		wg.Wait()
		listed := map[string]int{}
		keys, err := s.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			listed[k.Name]++
		}
		for _, name := range []string{from, to} {
			k, err := s.KeyByName(ctx, name)
			switch {
			case err == nil && k.Name == name && listed[name] == 1:
			case errors.Is(err, store.ErrNotFound) && listed[name] == 0:
				MustCreate(t, s, name) // free: creatable
			default:
				t.Fatalf("round %d: %s: KeyByName = %+v, %v; listed %d times", i, name, k, err, listed[name])
			}
		}
	}
}

func testLifecycle(t *testing.T, s store.Store) {
	ctx := context.Background()
	k, _ := MustCreate(t, s, "life")

	renamed, err := s.UpdateKey(ctx, "life", func(k *store.Key) error { k.Name = "renamed"; return nil })
	if err != nil || renamed.Name != "renamed" || renamed.Revision <= k.Revision {
		t.Fatalf("rename = %+v, %v", renamed, err)
	}
	if _, err := s.KeyByName(ctx, "life"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old name still resolves: %v", err)
	}
	MustCreate(t, s, "life") // the old name is free again

	disabled, err := s.UpdateKey(ctx, "renamed", func(k *store.Key) error { k.Enabled = false; return nil })
	if err != nil || disabled.Enabled {
		t.Fatalf("disable = %+v, %v", disabled, err)
	}
	if v := check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash}); v.Status != store.KeyDisabled {
		t.Fatalf("disabled key status = %v", v.Status)
	}
	if _, err := s.UpdateKey(ctx, "renamed", func(k *store.Key) error { k.Enabled = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if v := check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash}); v.Status != store.KeyValid {
		t.Fatalf("re-enabled key status = %v", v.Status)
	}

	g, _ := apikey.Generate()
	rotated, err := s.UpdateKey(ctx, "renamed", func(k *store.Key) error { k.Hash, k.Prefix = g.Hash, g.Display; return nil })
	if err != nil || rotated.ID != k.ID {
		t.Fatalf("rotate = %+v, %v", rotated, err)
	}
	if v := check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash}); v.Status != store.KeyUnknown {
		t.Fatalf("old secret after rotation: status = %v, want unknown", v.Status)
	}
	if _, err := s.KeyIDByHash(ctx, k.Hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old hash still indexed: %v", err)
	}
	if id, err := s.KeyIDByHash(ctx, g.Hash); err != nil || id != k.ID {
		t.Fatalf("new hash lookup = %q, %v", id, err)
	}
	if v := check(t, s, store.Check{KeyID: k.ID, Hash: g.Hash}); v.Status != store.KeyValid {
		t.Fatalf("new secret status = %v", v.Status)
	}

	if err := s.DeleteKey(ctx, "renamed"); err != nil {
		t.Fatal(err)
	}
	if v := check(t, s, store.Check{KeyID: k.ID, Hash: g.Hash}); v.Status != store.KeyUnknown {
		t.Fatalf("deleted key status = %v", v.Status)
	}
	if err := s.DeleteKey(ctx, "renamed"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete err = %v", err)
	}
	if _, err := s.UpdateKey(ctx, "renamed", func(*store.Key) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of deleted key err = %v", err)
	}
}

func testFreshRecord(t *testing.T, s store.Store) {
	ctx := context.Background()
	k, _ := MustCreate(t, s, "fresh")
	v := check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash})
	rev := v.Fresh.Revision
	if _, err := s.UpdateKey(ctx, "fresh", func(k *store.Key) error { k.Name = "fresher"; return nil }); err != nil {
		t.Fatal(err)
	}
	v = check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash, Revision: rev})
	if v.Fresh == nil || v.Fresh.Name != "fresher" {
		t.Fatalf("after rename, verdict = %+v, want the fresh record", v)
	}
}

func testExpiry(t *testing.T, s store.Store) {
	k, _ := NewKey(t, "expired")
	k.ExpiresAt = time.Now().Add(-time.Second)
	if err := s.CreateKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if v := check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash}); v.Status != store.KeyExpired {
		t.Fatalf("expired key status = %v", v.Status)
	}
	later, _ := NewKey(t, "later")
	later.ExpiresAt = time.Now().Add(time.Hour)
	if err := s.CreateKey(context.Background(), later); err != nil {
		t.Fatal(err)
	}
	if v := check(t, s, store.Check{KeyID: later.ID, Hash: later.Hash}); v.Status != store.KeyValid {
		t.Fatalf("unexpired key status = %v", v.Status)
	}
}

func testLimit(t *testing.T, s store.Store, a store.Algorithm) {
	ctx := context.Background()
	p := store.Policy{Limit: 5, Window: time.Hour}
	subject := "198.51.100.7-" + string(a)
	var last store.Decision
	for i := range 5 {
		d, err := s.Limit(ctx, subject, p, a, store.Ask{})
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed || d.Remaining != int64(4-i) || d.Limit != 5 {
			t.Fatalf("request %d: %+v, want allowed with %d remaining", i+1, d, 4-i)
		}
		if i < 4 && (!d.Reset.After(time.Now()) || d.Reset.After(time.Now().Add(time.Hour+time.Second))) {
			t.Fatalf("request %d: reset %v not within the window", i+1, d.Reset)
		}
		last = d
	}
	d, err := s.Limit(ctx, subject, p, a, store.Ask{})
	if err != nil {
		t.Fatal(err)
	}
	// The last request admitted, Remaining 0, resets when the next one
	// will be admitted, as the refusal says: a client that waits for it
	// is not refused again (under sliding_window the window's end came
	// before, the previous window's count still weighing).
	if !last.Reset.Equal(d.Reset) {
		t.Fatalf("the last request admitted resets at %v, the refused one after it at %v: want the same", last.Reset, d.Reset)
	}
	// A sliding log frees a slot within one window; a sliding window may
	// have to wait into the next one, until enough of this window's count
	// has slid out of it: up to two.
	maxWait := p.Window
	if a == store.SlidingWindow {
		maxWait = 2 * p.Window
	}
	if d.Allowed || d.Remaining != 0 || d.RetryAfter <= 0 || d.RetryAfter > maxWait+time.Second {
		t.Fatalf("6th request: %+v, want denied with a retry within %v", d, maxWait)
	}
	if other, _ := s.Limit(ctx, subject+"-other", p, a, store.Ask{}); !other.Allowed {
		t.Fatal("another subject was limited too")
	}
	// a short window frees up again: at the reset of its last request
	// admitted, and after a refusal's Retry-After
	short := store.Policy{Limit: 2, Window: 300 * time.Millisecond}
	for range 2 {
		if last, _ = s.Limit(ctx, "short-reset-"+string(a), short, a, store.Ask{}); !last.Allowed {
			t.Fatal("within limit but denied")
		}
	}
	time.Sleep(time.Until(last.Reset) + 20*time.Millisecond)
	if d, _ := s.Limit(ctx, "short-reset-"+string(a), short, a, store.Ask{}); !d.Allowed {
		t.Fatalf("at the reset of the last request admitted (%+v) still denied: %+v", last, d)
	}
	for range 2 {
		if d, _ := s.Limit(ctx, "short-"+string(a), short, a, store.Ask{}); !d.Allowed {
			t.Fatal("within limit but denied")
		}
	}
	d, _ = s.Limit(ctx, "short-"+string(a), short, a, store.Ask{})
	if d.Allowed {
		t.Fatal("over limit but allowed")
	}
	time.Sleep(d.RetryAfter + 50*time.Millisecond)
	if d, _ := s.Limit(ctx, "short-"+string(a), short, a, store.Ask{}); !d.Allowed {
		t.Fatalf("after Retry-After (%v) still denied", d.RetryAfter)
	}
}

// testEpoch: gateways holding leases watch the epoch to learn that some
// key changed; every update and delete must move it, the hot path never.
func testEpoch(t *testing.T, s store.Store) {
	ctx := context.Background()
	epoch := func() int64 {
		t.Helper()
		e, err := s.Epoch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	k, _ := MustCreate(t, s, "watched")
	e := epoch()
	check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash, Policy: store.Policy{Limit: 5, Window: time.Minute}})
	if epoch() != e {
		t.Fatal("a check moved the epoch")
	}
	for _, change := range []func(*store.Key) error{
		func(k *store.Key) error { k.Enabled = false; return nil },
		func(k *store.Key) error { k.Name = "watched-renamed"; return nil },
		func(k *store.Key) error { k.Hash = apikey.Sum("sk_" + strings.Repeat("ab", 24)); return nil },
	} {
		name := "watched"
		if got, err := s.KeyByName(ctx, name); err != nil || got.ID != k.ID {
			name = "watched-renamed"
		}
		if _, err := s.UpdateKey(ctx, name, change); err != nil {
			t.Fatal(err)
		}
		if next := epoch(); next == e {
			t.Fatal("an update left the epoch where it was")
		} else {
			e = next
		}
	}
	if err := s.DeleteKey(ctx, "watched-renamed"); err != nil {
		t.Fatal(err)
	}
	if epoch() == e {
		t.Fatal("a delete left the epoch where it was")
	}
}

// testLeases asks for leases larger than what is left: a store grants at
// least one request and at most the lease, never past the limit, both
// through Limit and through CheckKey, asked ahead or not, and counts what
// it grants. A lease lasts as long as the algorithm allows: a sliding
// log's for the spread asked for, its requests staggered across it, a
// sliding window's to the window's end, at most MaxLease.
func testLeases(t *testing.T, s store.Store, a store.Algorithm) {
	ctx := context.Background()
	p := store.Policy{Limit: 10, Window: time.Hour}
	const spread = 1500 * time.Millisecond // asked for in whole seconds: 2s
	offsets := map[string]time.Duration{}  // a sliding window ends where the subject's windows start
	takes := map[string]func() store.Decision{}
	for _, ahead := range []bool{false, true} {
		ask := store.Ask{Take: 4, Spread: spread, Ahead: ahead}
		name := fmt.Sprintf("ahead=%v", ahead)
		subject := "leases-" + name + "-" + string(a)
		offsets["Limit/"+name] = store.WindowOffset('s', subject, p.Window)
		takes["Limit/"+name] = func() store.Decision {
			d, err := s.Limit(ctx, subject, p, a, ask)
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		k, _ := MustCreate(t, s, "leased-"+name+"-"+string(a))
		offsets["CheckKey/"+name] = store.WindowOffset('k', k.ID, p.Window)
		takes["CheckKey/"+name] = func() store.Decision {
			return check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash, Revision: k.Revision, Policy: p, Algorithm: a, Ask: ask}).Limit
		}
	}
	for name, take := range takes {
		granted := int64(0)
		var last store.Decision
		for {
			d := take()
			if !d.Allowed {
				if d.Granted != 0 || d.RetryAfter <= 0 {
					t.Fatalf("%s: refusal %+v", name, d)
				}
				// the grant that reached the limit resets when the refusal does
				if !last.Reset.Equal(d.Reset) {
					t.Fatalf("%s: the last grant resets at %v, the refusal after it at %v", name, last.Reset, d.Reset)
				}
				break
			}
			last = d
			if d.Granted < 1 || d.Granted > 4 || d.Lease < 0 || d.Lease > store.MaxLease {
				t.Fatalf("%s: %+v, want 1..4 granted for at most %v", name, d, store.MaxLease)
			}
			if ends := time.Duration(d.Reset.UnixMilli()%p.Window.Milliseconds()) * time.Millisecond; a == store.SlidingWindow && d.Remaining > 0 && ends != offsets[name] {
				t.Fatalf("%s: the window ends %v into the hour, want at the subject's offset, %v", name, ends, offsets[name])
			}
			if d.Granted > 1 {
				want, staggered := leaseLength(a, p.Window, offsets[name], time.Now())
				if d.Lease < want-time.Second || d.Lease > want+time.Second || staggered && d.Lease != want || d.Staggered != staggered {
					t.Fatalf("%s: %+v, want a lease of about %v, staggered %v", name, d, want, staggered)
				}
			}
			granted += d.Granted
			if granted > p.Limit || d.Remaining != p.Limit-granted {
				t.Fatalf("%s: %d granted in all, remaining %d; limit %d", name, granted, d.Remaining, p.Limit)
			}
		}
		if granted != p.Limit {
			t.Fatalf("%s: %d granted before the first refusal, want the limit, %d", name, granted, p.Limit)
		}
	}
}

// leaseLength is how long a lease granted now lasts, and whether its
// requests are staggered across it: a sliding log's for the spread asked
// for in testLeases (rounded up to seconds), a sliding window's to the end
// of the subject's window (which starts offset into each period).
func leaseLength(a store.Algorithm, window, offset time.Duration, now time.Time) (time.Duration, bool) {
	if a == store.SlidingLog {
		return 2 * time.Second, true
	}
	into := (now.UnixMilli() - offset.Milliseconds()) % window.Milliseconds()
	untilEnd := window - time.Duration((into+window.Milliseconds())%window.Milliseconds())*time.Millisecond
	return min(store.MaxLease, untilEnd), false
}

func testSlidingLogConcurrent(t *testing.T, s store.Store) {
	p := store.Policy{Limit: 50, Window: time.Hour}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				d, err := s.Limit(context.Background(), "crowd", p, store.SlidingLog, store.Ask{})
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if admitted.Load() != 50 {
		t.Fatalf("sliding_log admitted %d of 200 concurrent requests, want exactly 50", admitted.Load())
	}
}

func testKeyLimit(t *testing.T, s store.Store) {
	a, _ := MustCreate(t, s, "a")
	b, _ := MustCreate(t, s, "b")
	p := store.Policy{Limit: 2, Window: time.Hour}
	for i := range 3 {
		v := check(t, s, store.Check{KeyID: a.ID, Hash: a.Hash, Policy: p, Algorithm: store.SlidingWindow})
		if v.Status != store.KeyValid || v.Limit.Allowed != (i < 2) {
			t.Fatalf("key a request %d: %+v", i+1, v)
		}
	}
	if v := check(t, s, store.Check{KeyID: b.ID, Hash: b.Hash, Policy: p, Algorithm: store.SlidingWindow}); !v.Limit.Allowed {
		t.Fatal("key b limited by key a's traffic")
	}
	// a disabled key never consumes its limit
	if _, err := s.UpdateKey(context.Background(), "b", func(k *store.Key) error { k.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if v := check(t, s, store.Check{KeyID: b.ID, Hash: b.Hash, Policy: p, Algorithm: store.SlidingWindow}); v.Status != store.KeyDisabled {
		t.Fatalf("disabled: %+v", v)
	}
}

func testLastUsed(t *testing.T, s store.Store) {
	k, _ := MustCreate(t, s, "used")
	before, _ := s.KeyByName(context.Background(), "used")
	if !before.LastUsedAt.IsZero() {
		t.Fatalf("new key has last-used %v", before.LastUsedAt)
	}
	check(t, s, store.Check{KeyID: k.ID, Hash: k.Hash})
	after, _ := s.KeyByName(context.Background(), "used")
	if after.LastUsedAt.IsZero() || time.Since(after.LastUsedAt) > time.Minute {
		t.Fatalf("last-used after a request = %v", after.LastUsedAt)
	}
}

// testZones: a policy's zone keeps its counters apart from those of the
// same limit in another zone, or in none, for a key and a subject alike.
func testZones(t *testing.T, s store.Store) {
	ctx := context.Background()
	k, _ := MustCreate(t, s, "zoned")
	for _, a := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		for _, zone := range []string{"", "shortlink", "seclink"} {
			p := store.Policy{Limit: 1, Window: time.Hour, Zone: zone}
			for i, want := range []bool{true, false} {
				d, err := s.Limit(ctx, "203.0.113.9", p, a, store.Ask{})
				if err != nil || d.Allowed != want {
					t.Fatalf("%s, zone %q, subject's request %d: %+v, %v; want allowed %v", a, zone, i+1, d, err, want)
				}
				v, err := s.CheckKey(ctx, store.Check{KeyID: k.ID, Hash: k.Hash, Policy: p, Algorithm: a})
				if err != nil || v.Status != store.KeyValid || v.Limit.Allowed != want {
					t.Fatalf("%s, zone %q, key's request %d: %+v, %v; want allowed %v", a, zone, i+1, v, err, want)
				}
			}
		}
	}
}
