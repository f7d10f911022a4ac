package apikey

import (
	"crypto/sha256"
	"strings"
	"testing"
)

func TestGenerateIsWellFormedAndUnique(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		g, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if !WellFormed(g.Secret) {
			t.Fatalf("generated key %q is not well formed", g.Secret)
		}
		if seen[g.Secret] {
			t.Fatal("duplicate key generated")
		}
		seen[g.Secret] = true
		if g.Hash != Sum(g.Secret) {
			t.Fatal("hash does not match secret")
		}
		if !strings.HasPrefix(g.Secret, strings.TrimSuffix(g.Display, "…")) || len(g.Display) >= len(g.Secret) {
			t.Fatalf("display %q reveals too much or does not match", g.Display)
		}
	}
}

func TestWellFormed(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"sk_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6", true},
		{"sk_A1B2C3D4E5F6A1B2C3D4E5F6A1B2C3D4E5F6A1B2C3D4E5F6", false},
		{"sk_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f", false},
		{"sk_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a", false},
		{"pk_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6", false},
		{"sk_g1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6", false},
		{"sk_live_xxx", false},
		{"", false},
	} {
		if got := WellFormed(tc.in); got != tc.want {
			t.Errorf("WellFormed(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// Sum is SHA-256 whatever the length, and hashing a well-formed key, as
// every request with one does, allocates nothing.
func TestSum(t *testing.T) {
	for _, n := range []int{0, 1, 32, 33, Length - 1, Length, Length + 1, 4096} {
		s := Prefix + strings.Repeat("a", max(n-len(Prefix), 0))
		s = s[:n]
		if Sum(s) != sha256.Sum256([]byte(s)) {
			t.Errorf("Sum of %d bytes is not their SHA-256", n)
		}
	}
	g, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = Sum(g.Secret) }); allocs != 0 {
		t.Errorf("Sum of a well-formed key: %v allocations, want 0", allocs)
	}
}

func BenchmarkWellFormedAndSum(b *testing.B) {
	g, _ := Generate()
	b.ReportAllocs()
	for b.Loop() {
		if !WellFormed(g.Secret) {
			b.Fatal("not well formed")
		}
		_ = Sum(g.Secret)
	}
}

func FuzzWellFormed(f *testing.F) {
	f.Add("sk_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6")
	f.Add("sk_")
	f.Fuzz(func(t *testing.T, s string) {
		if WellFormed(s) && (len(s) != Length || !strings.HasPrefix(s, Prefix)) {
			t.Fatalf("accepted %q", s)
		}
	})
}
