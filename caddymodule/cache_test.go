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
// keys it stops remembering new ones, sweeps what ended at most once per
// unknownTTL (each sweep walks them all, holding the lock every lookup
// waits for), and then makes room.
func TestNegativeCacheIsBounded(t *testing.T) {
	c := newKeyCache()
	t0 := time.Unix(1_800_000_000, 0)
	c.markUnknown(hashN(0), t0.Add(-unknownTTL/2)) // ends first
	for n := uint64(1); n < maxUnknown; n++ {
		c.markUnknown(hashN(n), t0)
	}
	swept := t0.Add(time.Millisecond) // full: a sweep, which frees nothing
	c.markUnknown(hashN(maxUnknown), swept)
	if _, unknown := c.get(hashN(maxUnknown), swept); unknown || len(c.unknown) != maxUnknown {
		t.Fatalf("full: remembered %v, %d held; want it not remembered, %d held", unknown, len(c.unknown), maxUnknown)
	}
	// hash 0 has ended, but the last sweep was less than unknownTTL ago
	soon := t0.Add(unknownTTL * 3 / 4)
	c.markUnknown(hashN(maxUnknown+1), soon)
	if _, unknown := c.get(hashN(maxUnknown+1), soon); unknown {
		t.Fatal("swept again within unknownTTL of the last sweep")
	}
	later := swept.Add(unknownTTL)
	c.markUnknown(hashN(maxUnknown+2), later)
	if _, unknown := c.get(hashN(maxUnknown+2), later); !unknown || len(c.unknown) != 1 {
		t.Fatalf("a sweep after the flood's entries ended: remembered %v, %d held; want it remembered alone", unknown, len(c.unknown))
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
