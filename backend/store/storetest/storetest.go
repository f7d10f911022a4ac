// Package storetest is the conformance suite of the store interfaces. Every
// implementation runs it (redisstore against a real redis-server, boltstore
// against a file in a temp dir), so the guarantees the HTTP API relies on
// are tested once and hold for both.
//
// The suite uses the real clock: Redis expires keys on its own clock, so the
// expiry tests create records that live for a fraction of a second and then
// wait them out. Assertions that need "still alive" are only made while the
// deadline is comfortably ahead, so a slow machine skips a check instead of
// failing it.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/backend/store"
)

// Factory returns a fresh, empty store configured with cfg (TombstoneTTL is
// always set; Now is nil, meaning the real clock). The factory registers its
// own cleanup.
type Factory func(t *testing.T, cfg store.Config) store.Store

// Racers is how many goroutines the race tests start.
const Racers = 32

// longTombstone outlives every test; the tombstone-expiry test sets a short one.
const longTombstone = time.Hour

// Run runs every conformance test.
func Run(t *testing.T, newStore Factory) {
	t.Run("Links", func(t *testing.T) { RunLinks(t, newStore) })
	t.Run("Secrets", func(t *testing.T) { RunSecrets(t, newStore) })
	t.Run("PasscodeAttempts", func(t *testing.T) { RunPasscodeAttempts(t, newStore) })
	t.Run("Reports", func(t *testing.T) { RunReports(t, newStore) })
}

func fresh(t *testing.T, newStore Factory) store.Store {
	t.Helper()
	return newStore(t, store.Config{TombstoneTTL: longTombstone})
}

// start runs fn in n goroutines released at the same moment, and waits.
func start(n int, fn func(i int)) {
	var ready, done sync.WaitGroup
	gate := make(chan struct{})
	ready.Add(n)
	done.Add(n)
	for i := range n {
		go func() {
			defer done.Done()
			ready.Done()
			<-gate
			fn(i)
		}()
	}
	ready.Wait()
	close(gate)
	done.Wait()
}

func ms(t time.Time) time.Time { return t.Truncate(time.Millisecond) }

// RunLinks tests a store.LinkStore.
func RunLinks(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("CreateGet", func(t *testing.T) {
		s := fresh(t, newStore)
		now := time.Now()
		l, err := s.CreateLink(ctx, store.NewLink{Slug: "myslug", URL: "https://example.com/a?b=c#d", OwnerID: 7, CreatedAt: now})
		if err != nil {
			t.Fatal(err)
		}
		if l.ID <= 0 || l.Slug != "myslug" || l.URL != "https://example.com/a?b=c#d" || l.OwnerID != 7 ||
			!l.CreatedAt.Equal(ms(now)) || l.VisitCount != 0 || !l.LastVisitedAt.IsZero() {
			t.Fatalf("created %+v", l)
		}
		got, err := s.GetLink(ctx, "myslug")
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != l.ID || got.Slug != l.Slug || got.URL != l.URL || got.OwnerID != l.OwnerID ||
			!got.CreatedAt.Equal(l.CreatedAt) || got.VisitCount != 0 || !got.LastVisitedAt.IsZero() {
			t.Fatalf("got %+v, created %+v", got, l)
		}
		if _, err := s.GetLink(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown slug: %v, want ErrNotFound", err)
		}
	})

	t.Run("IDsIncrease", func(t *testing.T) {
		s := fresh(t, newStore)
		var last int64
		for i := range 5 {
			l, err := s.CreateLink(ctx, store.NewLink{Slug: fmt.Sprintf("s%d", i), URL: "https://example.com", CreatedAt: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			if l.ID <= last {
				t.Fatalf("id %d after %d", l.ID, last)
			}
			last = l.ID
		}
	})

	t.Run("SlugTaken", func(t *testing.T) {
		s := fresh(t, newStore)
		first, err := s.CreateLink(ctx, store.NewLink{Slug: "taken", URL: "https://one.example", CreatedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.CreateLink(ctx, store.NewLink{Slug: "taken", URL: "https://two.example", CreatedAt: time.Now()})
		if !errors.Is(err, store.ErrSlugTaken) {
			t.Fatalf("second create: %v, want ErrSlugTaken", err)
		}
		got, err := s.GetLink(ctx, "taken")
		if err != nil || got.URL != "https://one.example" || got.ID != first.ID {
			t.Fatalf("after losing create: %+v, %v", got, err)
		}
		// Slugs are case-sensitive: a different case is a different slug.
		if _, err := s.CreateLink(ctx, store.NewLink{Slug: "TAKEN", URL: "https://three.example", CreatedAt: time.Now()}); err != nil {
			t.Fatalf("other case: %v", err)
		}
	})

	t.Run("SlugRace", func(t *testing.T) {
		s := fresh(t, newStore)
		var (
			mu     sync.Mutex
			wins   []store.Link
			winURL string
			others []error
		)
		start(Racers, func(i int) {
			u := fmt.Sprintf("https://racer%d.example", i)
			l, err := s.CreateLink(ctx, store.NewLink{Slug: "race", URL: u, CreatedAt: time.Now()})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins = append(wins, l)
				winURL = u
			} else {
				others = append(others, err)
			}
		})
		if len(wins) != 1 {
			t.Fatalf("%d winners, want exactly 1", len(wins))
		}
		for _, err := range others {
			if !errors.Is(err, store.ErrSlugTaken) {
				t.Fatalf("loser got %v, want ErrSlugTaken", err)
			}
		}
		got, err := s.GetLink(ctx, "race")
		if err != nil || got.URL != winURL || got.ID != wins[0].ID {
			t.Fatalf("stored %+v (%v), winner %+v", got, err, wins[0])
		}
		// Losers allocated no ids.
		next, err := s.CreateLink(ctx, store.NewLink{Slug: "after", URL: "https://example.com", CreatedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if next.ID != wins[0].ID+1 {
			t.Fatalf("next id %d after winner %d: losers consumed ids", next.ID, wins[0].ID)
		}
	})

	t.Run("Visit", func(t *testing.T) {
		s := fresh(t, newStore)
		if _, err := s.CreateLink(ctx, store.NewLink{Slug: "v", URL: "https://example.com", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(time.Minute)
		l, err := s.VisitLink(ctx, "v", at)
		if err != nil {
			t.Fatal(err)
		}
		if l.VisitCount != 1 || !l.LastVisitedAt.Equal(ms(at)) || l.URL != "https://example.com" {
			t.Fatalf("after visit: %+v", l)
		}
		got, err := s.GetLink(ctx, "v")
		if err != nil || got.VisitCount != 1 || !got.LastVisitedAt.Equal(ms(at)) {
			t.Fatalf("get after visit: %+v, %v", got, err)
		}
		if _, err := s.VisitLink(ctx, "unknown", at); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("visit unknown: %v, want ErrNotFound", err)
		}
		if _, err := s.GetLink(ctx, "unknown"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("visiting an unknown slug created it: %v", err)
		}
	})

	t.Run("ConcurrentVisits", func(t *testing.T) {
		s := fresh(t, newStore)
		if _, err := s.CreateLink(ctx, store.NewLink{Slug: "busy", URL: "https://example.com", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		// each visit returns the link as its own visit left it: the counts
		// returned are 1 to Racers, once each
		counts := make(chan int64, Racers)
		errs := make(chan error, Racers)
		start(Racers, func(int) {
			l, err := s.VisitLink(ctx, "busy", time.Now())
			counts <- l.VisitCount
			errs <- err
		})
		close(errs)
		close(counts)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		seen := make(map[int64]bool, Racers)
		for c := range counts {
			if c < 1 || c > Racers || seen[c] {
				t.Fatalf("a visit returned count %d: not one of 1..%d, or returned twice", c, Racers)
			}
			seen[c] = true
		}
		got, err := s.GetLink(ctx, "busy")
		if err != nil || got.VisitCount != Racers {
			t.Fatalf("count %d (%v), want %d", got.VisitCount, err, Racers)
		}
	})

	t.Run("OwnerID", func(t *testing.T) {
		s := fresh(t, newStore)
		a, err := s.OwnerID(ctx, "owner:alice")
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.OwnerID(ctx, "key:k1")
		if err != nil {
			t.Fatal(err)
		}
		a2, err := s.OwnerID(ctx, "owner:alice")
		if err != nil {
			t.Fatal(err)
		}
		if a <= 0 || b <= 0 || a == b || a != a2 {
			t.Fatalf("alice %d/%d, k1 %d", a, a2, b)
		}
		ids := make(chan int64, Racers)
		start(Racers, func(int) {
			id, err := s.OwnerID(ctx, "owner:newcomer")
			if err != nil {
				t.Error(err)
			}
			ids <- id
		})
		close(ids)
		first := int64(-1)
		for id := range ids {
			if first == -1 {
				first = id
			}
			if id != first || id == a || id == b {
				t.Fatalf("concurrent first use gave %d and %d (others %d, %d)", first, id, a, b)
			}
		}
	})
}

func newSecret(id, expiry string, ttl time.Duration) store.Secret {
	now := time.Now()
	return store.Secret{
		ID: id, EncryptedBlob: "YmxvYg==", IV: "aXY=", ExpiryType: expiry,
		CreatedAt: now, ExpiresAt: now.Add(ttl),
	}
}

func sameSecret(a, b store.Secret) bool {
	return a.ID == b.ID && a.EncryptedBlob == b.EncryptedBlob && a.IV == b.IV && a.ExpiryType == b.ExpiryType &&
		a.PasscodeHash == b.PasscodeHash && a.CreatedAt.Equal(b.CreatedAt) && a.ExpiresAt.Equal(b.ExpiresAt)
}

var errWrongPasscode = errors.New("wrong passcode")

func passcode(want string) func(store.Secret) error {
	return func(s store.Secret) error {
		if s.PasscodeHash != want {
			return errWrongPasscode
		}
		return nil
	}
}

// RunSecrets tests a store.SecretStore.
func RunSecrets(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("CreateOpen", func(t *testing.T) {
		s := fresh(t, newStore)
		sec := newSecret("AAAAAAAAAAA1", store.OneHour, time.Hour)
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		for range 3 { // not view_once: readable again and again
			got, err := s.OpenSecret(ctx, sec.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !sameSecret(got, sec) {
				t.Fatalf("got %+v, want %+v", got, sec)
			}
		}
	})

	t.Run("Unknown", func(t *testing.T) {
		s := fresh(t, newStore)
		if _, err := s.OpenSecret(ctx, "doesnotexist", nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown: %v, want ErrNotFound", err)
		}
	})

	t.Run("ViewOnce", func(t *testing.T) {
		s := fresh(t, newStore)
		sec := newSecret("AAAAAAAAAAA2", store.ViewOnce, time.Hour)
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		got, err := s.OpenSecret(ctx, sec.ID, nil)
		if err != nil || !sameSecret(got, sec) {
			t.Fatalf("first read: %+v, %v", got, err)
		}
		for range 2 {
			if _, err := s.OpenSecret(ctx, sec.ID, nil); !errors.Is(err, store.ErrGone) {
				t.Fatalf("read after view_once: %v, want ErrGone", err)
			}
		}
		// The tombstone keeps the id: it cannot be reused while it lives.
		if err := s.CreateSecret(ctx, newSecret(sec.ID, store.OneHour, time.Hour)); !errors.Is(err, store.ErrIDTaken) {
			t.Fatalf("reusing a tombstoned id: %v, want ErrIDTaken", err)
		}
	})

	t.Run("ViewOnceRace", func(t *testing.T) {
		s := fresh(t, newStore)
		sec := newSecret("AAAAAAAAAAA3", store.ViewOnce, time.Hour)
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		var (
			mu   sync.Mutex
			wins int
			errs []error
		)
		start(Racers, func(int) {
			got, err := s.OpenSecret(ctx, sec.ID, passcode(""))
			mu.Lock()
			defer mu.Unlock()
			if err == nil && sameSecret(got, sec) {
				wins++
			} else {
				errs = append(errs, err)
			}
		})
		if wins != 1 {
			t.Fatalf("%d readers got the view_once secret, want exactly 1", wins)
		}
		for _, err := range errs {
			if !errors.Is(err, store.ErrGone) {
				t.Fatalf("loser got %v, want ErrGone", err)
			}
		}
	})

	t.Run("AuthorizeDoesNotBurn", func(t *testing.T) {
		s := fresh(t, newStore)
		sec := newSecret("AAAAAAAAAAA4", store.ViewOnce, time.Hour)
		sec.PasscodeHash = "right"
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := s.OpenSecret(ctx, sec.ID, passcode("wrong")); !errors.Is(err, errWrongPasscode) {
				t.Fatalf("wrong passcode: %v, want the authorize error", err)
			}
		}
		got, err := s.OpenSecret(ctx, sec.ID, passcode("right"))
		if err != nil || !sameSecret(got, sec) {
			t.Fatalf("right passcode after wrong ones: %+v, %v", got, err)
		}
		if _, err := s.OpenSecret(ctx, sec.ID, passcode("right")); !errors.Is(err, store.ErrGone) {
			t.Fatalf("second read: %v, want ErrGone", err)
		}
	})

	t.Run("IDTaken", func(t *testing.T) {
		s := fresh(t, newStore)
		sec := newSecret("AAAAAAAAAAA5", store.OneWeek, time.Hour)
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		other := newSecret(sec.ID, store.OneDay, time.Hour)
		other.EncryptedBlob = "b3RoZXI="
		if err := s.CreateSecret(ctx, other); !errors.Is(err, store.ErrIDTaken) {
			t.Fatalf("duplicate id: %v, want ErrIDTaken", err)
		}
		got, err := s.OpenSecret(ctx, sec.ID, nil)
		if err != nil || !sameSecret(got, sec) {
			t.Fatalf("original after duplicate create: %+v, %v", got, err)
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		s := fresh(t, newStore)
		const ttl = 400 * time.Millisecond
		plain := newSecret("AAAAAAAAAAA6", store.OneHour, ttl)
		once := newSecret("AAAAAAAAAAA7", store.ViewOnce, ttl)
		for _, sec := range []store.Secret{plain, once} {
			if err := s.CreateSecret(ctx, sec); err != nil {
				t.Fatal(err)
			}
		}
		if time.Until(plain.ExpiresAt) > ttl/2 {
			if _, err := s.OpenSecret(ctx, plain.ID, nil); err != nil {
				t.Fatalf("before expiry: %v", err)
			}
		}
		time.Sleep(time.Until(once.ExpiresAt) + 100*time.Millisecond)
		for _, sec := range []store.Secret{plain, once} {
			// An expired view_once secret was never read: 404, not 410.
			if _, err := s.OpenSecret(ctx, sec.ID, nil); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("%s after expiry: %v, want ErrNotFound", sec.ExpiryType, err)
			}
		}
		// An expired id is free again.
		if err := s.CreateSecret(ctx, newSecret(plain.ID, store.OneHour, time.Hour)); err != nil {
			t.Fatalf("reusing an expired id: %v", err)
		}
	})

	t.Run("TombstoneExpiry", func(t *testing.T) {
		const ttl = 500 * time.Millisecond
		s := newStore(t, store.Config{TombstoneTTL: ttl})
		sec := newSecret("AAAAAAAAAAA8", store.ViewOnce, time.Hour)
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		readAt := time.Now()
		if _, err := s.OpenSecret(ctx, sec.ID, nil); err != nil {
			t.Fatal(err)
		}
		if time.Since(readAt) < ttl/2 {
			if _, err := s.OpenSecret(ctx, sec.ID, nil); !errors.Is(err, store.ErrGone) {
				t.Fatalf("right after the read: %v, want ErrGone", err)
			}
		}
		time.Sleep(time.Until(readAt.Add(ttl)) + 200*time.Millisecond)
		if _, err := s.OpenSecret(ctx, sec.ID, nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("after the tombstone expired: %v, want ErrNotFound", err)
		}
	})
}

// RunReports tests a store.ReportStore.
func RunReports(t *testing.T, newStore Factory) {
	ctx := context.Background()
	s := fresh(t, newStore)
	got, err := s.Reports(ctx, 10)
	if err != nil || len(got) != 0 {
		t.Fatalf("empty store: %v, %v", got, err)
	}
	var want []store.Report
	for i := range 3 {
		r := store.Report{
			SecretID: fmt.Sprintf("AAAAAAAAAAB%d", i), Reason: fmt.Sprintf("reason %d", i),
			Reporter: "key-1", RemoteIP: "192.0.2.1", CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
		}
		if err := s.AddReport(ctx, r); err != nil {
			t.Fatal(err)
		}
		want = append(want, r)
	}
	got, err = s.Reports(ctx, 10)
	if err != nil || len(got) != len(want) {
		t.Fatalf("reports: %v, %v", got, err)
	}
	for i := range want {
		if got[i].SecretID != want[i].SecretID || got[i].Reason != want[i].Reason || got[i].Reporter != want[i].Reporter ||
			got[i].RemoteIP != want[i].RemoteIP || !got[i].CreatedAt.Equal(want[i].CreatedAt) {
			t.Fatalf("report %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if got, err := s.Reports(ctx, 2); err != nil || len(got) != 2 || got[0].SecretID != want[1].SecretID || got[1].SecretID != want[2].SecretID {
		t.Fatalf("limit 2: %v, %v; want the newest two, oldest first", got, err)
	}

	// A store keeps the newest MaxReports: a flood of reports cannot fill it.
	capped := newStore(t, store.Config{TombstoneTTL: longTombstone, MaxReports: 3})
	for i := range 7 {
		if err := capped.AddReport(ctx, store.Report{SecretID: fmt.Sprintf("AAAAAAAAAAC%d", i), CreatedAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	got, err = capped.Reports(ctx, 10)
	if err != nil || len(got) != 3 || got[0].SecretID != "AAAAAAAAAAC4" || got[2].SecretID != "AAAAAAAAAAC6" {
		t.Fatalf("MaxReports 3 after 7 reports: %v, %v; want the newest three, oldest first", got, err)
	}
}
