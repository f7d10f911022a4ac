package boltstore_test

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/boltstore"
)

// BenchmarkVisitLink is a short link's redirect, each counting a visit (a
// write to the file): one client at a time, then 64 at once.
func BenchmarkVisitLink(b *testing.B) {
	ctx := context.Background()
	s, err := boltstore.Open(filepath.Join(b.TempDir(), "backend.db"), boltstore.Options{SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	if _, err := s.CreateLink(ctx, store.NewLink{Slug: "busy", URL: "https://example.com", OwnerID: 1, CreatedAt: time.Now()}); err != nil {
		b.Fatal(err)
	}
	visit := func(b *testing.B) {
		if _, err := s.VisitLink(ctx, "busy", time.Now()); err != nil {
			b.Error(err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			visit(b)
		}
	})
	b.Run("64clients", func(b *testing.B) {
		b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0))) // goroutines per GOMAXPROCS
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				visit(b)
			}
		})
	})
}
