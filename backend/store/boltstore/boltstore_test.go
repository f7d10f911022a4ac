package boltstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/boltstore"
	"github.com/keygate/keygate/backend/store/storetest"
)

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
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "backend.db"), boltstore.Options{
		Config: store.Config{Now: clock, TombstoneTTL: time.Hour}, SweepInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "backend.db"), boltstore.Options{
		Config: store.Config{Now: clock}, SweepInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
