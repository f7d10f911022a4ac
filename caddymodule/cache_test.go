package keygate

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/keygate/keygate/caddymodule/apikey"
)

// hashN is a distinct hash for each n.
func hashN(n uint64) (h apikey.Hash) {
	binary.BigEndian.PutUint64(h[:], n)
	return h
}

// The negative cache holds at most maxUnknown hashes: under a flood of bad
// keys it stops remembering new ones until the flood's first have ended,
// and then makes room, sweeping at most once per unknownTTL.
func TestNegativeCacheIsBounded(t *testing.T) {
	c := newKeyCache()
	t0 := time.Unix(1_800_000_000, 0)
	for n := range uint64(maxUnknown) {
		c.markUnknown(hashN(n), t0)
	}
	c.markUnknown(hashN(maxUnknown), t0.Add(time.Millisecond))
	if _, unknown := c.get(hashN(maxUnknown), t0.Add(time.Millisecond)); unknown || len(c.unknown) != maxUnknown {
		t.Fatalf("full: remembered %v, %d held; want it not remembered, %d held", unknown, len(c.unknown), maxUnknown)
	}
	later := t0.Add(time.Millisecond + unknownTTL) // a sweep at most once per unknownTTL
	c.markUnknown(hashN(maxUnknown+1), later)
	if _, unknown := c.get(hashN(maxUnknown+1), later); !unknown || len(c.unknown) != 1 {
		t.Fatalf("once the flood's entries ended: remembered %v, %d held; want it remembered alone", unknown, len(c.unknown))
	}
}

// BenchmarkMarkUnknownUnderAFlood is what each further bad key costs while
// the negative cache is full of entries that have not ended: the lock
// every request's lookup waits for is held that long. (Swept on every
// call, each walked all 10,000 entries.)
func BenchmarkMarkUnknownUnderAFlood(b *testing.B) {
	c := newKeyCache()
	t0 := time.Unix(1_800_000_000, 0)
	for n := range uint64(maxUnknown) {
		c.markUnknown(hashN(n), t0)
	}
	now := t0.Add(time.Millisecond)
	n := uint64(maxUnknown)
	for b.Loop() {
		n++
		c.markUnknown(hashN(n), now)
	}
}
