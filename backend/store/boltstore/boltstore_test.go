package boltstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/boltstore"
	"github.com/keygate/keygate/backend/store/storetest"
)

// openWithoutJanitor opens a store in a temp dir, with cfg and no janitor
// (the test sweeps), closed when the test ends.
func openWithoutJanitor(t *testing.T, cfg store.Config) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "backend.db"), boltstore.Options{Config: cfg, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, cfg store.Config) store.Store {
		s, err := boltstore.Open(filepath.Join(t.TempDir(), "backend.db"), boltstore.Options{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// TestReopen: links, owners, counters, secrets and tombstones survive a
// close and reopen of the file, as they must across a backend restart.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "backend.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	owner, err := s.OwnerID(ctx, "owner:alice")
	if err != nil {
		t.Fatal(err)
	}
	l1, err := s.CreateLink(ctx, store.NewLink{Slug: "keep", URL: "https://example.com", OwnerID: owner, CreatedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.VisitLink(ctx, "keep", time.Now()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	plain := store.Secret{ID: "AAAAAAAAAAA1", EncryptedBlob: "b", IV: "i", ExpiryType: store.OneDay, CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)}
	once := store.Secret{ID: "AAAAAAAAAAA2", EncryptedBlob: "b", IV: "i", ExpiryType: store.ViewOnce, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	for _, sec := range []store.Secret{plain, once} {
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.OpenSecret(ctx, once.ID, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.AddReport(ctx, store.Report{SecretID: once.ID, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // idempotent
		t.Fatal(err)
	}

	s, err = boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.GetLink(ctx, "keep")
	if err != nil || got.ID != l1.ID || got.VisitCount != 1 || got.OwnerID != owner {
		t.Fatalf("link after reopen: %+v, %v", got, err)
	}
	if id, err := s.OwnerID(ctx, "owner:alice"); err != nil || id != owner {
		t.Fatalf("owner after reopen: %d, %v (want %d)", id, err, owner)
	}
	l2, err := s.CreateLink(ctx, store.NewLink{Slug: "next", URL: "https://example.com", CreatedAt: time.Now()})
	if err != nil || l2.ID != l1.ID+1 {
		t.Fatalf("id after reopen: %+v, %v (want %d)", l2, err, l1.ID+1)
	}
	if _, err := s.OpenSecret(ctx, plain.ID, nil); err != nil {
		t.Fatalf("secret after reopen: %v", err)
	}
	if _, err := s.OpenSecret(ctx, once.ID, nil); !errors.Is(err, store.ErrGone) {
		t.Fatalf("read view_once after reopen: %v, want ErrGone", err)
	}
	if r, err := s.Reports(ctx, 10); err != nil || len(r) != 1 {
		t.Fatalf("reports after reopen: %v, %v", r, err)
	}
}

func TestFileModeAndLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "backend.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	// A second opener (another backend on the same data dir) fails instead
	// of hanging or corrupting the file.
	if s2, err := boltstore.Open(path, boltstore.Options{}); err == nil {
		s2.Close()
		t.Fatal("second Open of a locked file succeeded")
	} else if !strings.Contains(err.Error(), "locked by another process") {
		t.Errorf("second Open of a locked file: %v, want it to say the file is locked", err)
	}
}

// TestExpiryOnReadAndSweep uses a fake clock, which only the embedded store
// can honour: expiry is enforced on read without a sweep, and Sweep then
// reclaims the records.
func TestExpiryOnReadAndSweep(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	s := openWithoutJanitor(t, store.Config{Now: clock, TombstoneTTL: time.Hour})
	week := store.Secret{ID: "AAAAAAAAAAA1", ExpiryType: store.OneWeek, CreatedAt: now, ExpiresAt: now.Add(7 * 24 * time.Hour)}
	once := store.Secret{ID: "AAAAAAAAAAA2", ExpiryType: store.ViewOnce, CreatedAt: now, ExpiresAt: now.Add(7 * 24 * time.Hour)}
	for _, sec := range []store.Secret{week, once} {
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.OpenSecret(ctx, once.ID, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Sweep(); err != nil || n != 0 {
		t.Fatalf("sweep with nothing expired removed %d, %v", n, err)
	}

	now = now.Add(7*24*time.Hour + time.Millisecond)
	if _, err := s.OpenSecret(ctx, week.ID, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired, unswept: %v, want ErrNotFound", err)
	}
	if _, err := s.OpenSecret(ctx, once.ID, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired tombstone: %v, want ErrNotFound", err)
	}
	if n, err := s.Sweep(); err != nil || n != 2 {
		t.Fatalf("sweep removed %d, %v; want the secret and the tombstone", n, err)
	}
}

// TestSweepInBatches: a sweep with more expired records than one of its
// write transactions deletes removes them all, and none that lives on.
func TestSweepInBatches(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	s := openWithoutJanitor(t, store.Config{Now: clock})
	const expiring, living = 2500, 10
	for i := range expiring + living {
		ttl := time.Hour
		if i >= expiring {
			ttl = 7 * 24 * time.Hour
		}
		sec := store.Secret{ID: fmt.Sprintf("A%011d", i), ExpiryType: store.OneDay, CreatedAt: now, ExpiresAt: now.Add(ttl)}
		if err := s.CreateSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(2 * time.Hour)
	if n, err := s.Sweep(); err != nil || n != expiring {
		t.Fatalf("sweep removed %d, %v; want %d", n, err, expiring)
	}
	if n, err := s.Sweep(); err != nil || n != 0 {
		t.Fatalf("a second sweep removed %d, %v; want none", n, err)
	}
	for i := expiring; i < expiring+living; i++ {
		if _, err := s.OpenSecret(ctx, fmt.Sprintf("A%011d", i), nil); err != nil {
			t.Fatalf("a living secret after the sweep: %v", err)
		}
	}
}

// TestAttemptsOnTheClock uses a fake clock: a window of passcode attempts
// ends exactly when its time is up, counting then starts afresh, and Sweep
// deletes a record only once its window has ended.
func TestAttemptsOnTheClock(t *testing.T) {
	ctx := context.Background()
	now := time.Now().Truncate(time.Millisecond)
	clock := func() time.Time { return now }
	s := openWithoutJanitor(t, store.Config{Now: clock})
	const id, limit, window = "AAAAAAAAAAA1", 5, 15 * time.Minute
	reserve := func(want bool) (string, time.Time) {
		t.Helper()
		token, until, err := s.ReservePasscodeAttempt(ctx, id, limit, window)
		if err != nil || (token != "") != want {
			t.Fatalf("at %v: token %q, %v; want taken %v", now, token, err, want)
		}
		return token, until
	}
	begun := now
	for range limit {
		if _, until := reserve(true); !until.Equal(begun.Add(window)) {
			t.Fatalf("window ends %v, want %v", until, begun.Add(window))
		}
		now = now.Add(time.Minute)
	}
	now = begun.Add(window - time.Millisecond)
	if _, until := reserve(false); !until.Equal(begun.Add(window)) {
		t.Fatalf("refused until %v, want %v", until, begun.Add(window))
	}
	if n, err := s.Sweep(); err != nil || n != 0 {
		t.Fatalf("sweep within the window removed %d, %v", n, err)
	}
	now = begun.Add(window)
	token, until := reserve(true)
	if !until.Equal(now.Add(window)) {
		t.Fatalf("the next window ends %v, want %v", until, now.Add(window))
	}
	if err := s.ReleasePasscodeAttempt(ctx, id, token); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Sweep(); err != nil || n != 0 { // the last release deleted it
		t.Fatalf("sweep after the last release removed %d, %v", n, err)
	}
	reserve(true)
	now = now.Add(window)
	if n, err := s.Sweep(); err != nil || n != 1 {
		t.Fatalf("sweep after the window removed %d, %v; want the attempts record", n, err)
	}
}

// TestAuthorizeOutsideTransactions: when a view_once secret's id is reused
// after expiry between its authorisation and its consumption, the new
// secret is authorised again outside the store's transactions, where
// authorize may reserve a passcode attempt (inside, it would wait forever
// for the write lock its own transaction holds).
func TestAuthorizeOutsideTransactions(t *testing.T) {
	ctx := context.Background()
	var (
		mu  sync.Mutex
		now = time.Now()
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "backend.db"), boltstore.Options{
		Config: store.Config{Now: clock}, SweepInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	old := store.Secret{ID: "AAAAAAAAAAA1", EncryptedBlob: "old", ExpiryType: store.ViewOnce, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.CreateSecret(ctx, old); err != nil {
		t.Fatal(err)
	}
	authorized := 0
	authorize := func(sec store.Secret) error {
		authorized++
		if _, _, err := s.ReservePasscodeAttempt(ctx, sec.ID, 5, time.Minute); err != nil {
			return err
		}
		if authorized == 1 { // the old secret expires and its id is taken again
			mu.Lock()
			now = now.Add(2 * time.Hour)
			mu.Unlock()
			next := store.Secret{ID: old.ID, EncryptedBlob: "new", ExpiryType: store.ViewOnce, CreatedAt: clock(), ExpiresAt: clock().Add(time.Hour)}
			return s.CreateSecret(ctx, next)
		}
		return nil
	}
	type result struct {
		sec store.Secret
		err error
	}
	done := make(chan result, 1)
	go func() {
		sec, err := s.OpenSecret(ctx, old.ID, authorize)
		done <- result{sec, err}
	}()
	select {
	case r := <-done:
		if r.err != nil || r.sec.EncryptedBlob != "new" || authorized != 2 {
			t.Fatalf("got %+v, %v after %d authorisations; want the new secret, authorised too", r.sec, r.err, authorized)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OpenSecret hangs: authorize ran inside a write transaction") // s stays open: Close would hang too
	}
	_ = s.Close()
}

// TestOpenAddsTheAttemptsBucket: a file written before passcode attempts
// were counted (schema 1, no attempts bucket) opens and counts them.
func TestOpenAddsTheAttemptsBucket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "backend.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range []string{"meta", "links", "owners", "secrets", "gone", "reports"} {
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("1"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := boltstore.Open(path, boltstore.Options{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if token, _, err := s.ReservePasscodeAttempt(context.Background(), "AAAAAAAAAAA1", 5, time.Minute); err != nil || token == "" {
		t.Fatalf("reserving in an older file: %q, %v", token, err)
	}
	if _, err := s.Sweep(); err != nil {
		t.Fatal(err)
	}
}
