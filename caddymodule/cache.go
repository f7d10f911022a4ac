package keygate

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
)

const (
	// maxCachedKeys bounds the cache; past it, the cache starts over. Each
	// entry, with its record and identity, is about 530 bytes
	// (BenchmarkMemoryPerKey).
	maxCachedKeys = 100_000
	// unknownTTL is how long a hash that matched no key is remembered, so a
	// flood of bad keys costs one store lookup per hash per interval. A key
	// created on another replica is usable here within this time.
	unknownTTL = time.Second
	// maxUnknown bounds the negative cache.
	maxUnknown = 10_000
)

// cachedKey is a key record a gateway has seen. The record itself is never
// trusted on its own: every request still validates it in the store (one
// round trip), which answers with a fresh copy whenever the revision moved,
// so revocation, rotation and renames take effect at once on every replica.
type cachedKey struct {
	record atomic.Pointer[identity]
	// validatedAt (unix nanos) is when the store last accepted the key; with
	// on_store_error open, a recent one lets the key through an outage.
	validatedAt atomic.Int64
}

// keyCache maps key hashes to what is known about them.
type keyCache struct {
	mu      sync.RWMutex
	known   map[apikey.Hash]*cachedKey
	unknown map[apikey.Hash]time.Time // hash -> until when it is known not to exist
	// when the full negative cache was last swept of what ended: at most
	// once per unknownTTL, since under a flood a sweep frees nothing until
	// the flood's first entries end, and each would walk them all holding
	// the lock every request's get waits for
	sweptAt time.Time
}

func newKeyCache() *keyCache {
	return &keyCache{known: make(map[apikey.Hash]*cachedKey), unknown: make(map[apikey.Hash]time.Time)}
}

// get returns the entry for h, if any, and whether h recently matched no key.
func (c *keyCache) get(h apikey.Hash, now time.Time) (entry *cachedKey, knownUnknown bool) {
	c.mu.RLock()
	entry = c.known[h]
	until, miss := c.unknown[h]
	c.mu.RUnlock()
	return entry, miss && now.Before(until)
}

// put remembers the key with id for h; the record arrives with the first
// store check (revision 0 asks for it).
func (c *keyCache) put(h apikey.Hash, id string) *cachedKey {
	entry := new(cachedKey)
	entry.record.Store(newIdentity(&store.Key{ID: id}))
	c.mu.Lock()
	defer c.mu.Unlock()
	if existing := c.known[h]; existing != nil {
		return existing
	}
	if len(c.known) >= maxCachedKeys {
		clear(c.known)
	}
	c.known[h] = entry
	delete(c.unknown, h)
	return entry
}

// markUnknown remembers that h matched no key, and forgets any entry for it.
func (c *keyCache) markUnknown(h apikey.Hash, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.known, h)
	if len(c.unknown) >= maxUnknown {
		if now.Sub(c.sweptAt) < unknownTTL {
			return // under a flood, stop remembering rather than grow
		}
		c.sweptAt = now
		for k, until := range c.unknown {
			if !now.Before(until) {
				delete(c.unknown, k)
			}
		}
		if len(c.unknown) >= maxUnknown {
			return
		}
	}
	c.unknown[h] = now.Add(unknownTTL)
}

// forgetUnknown forgets that h matched no key: a key with it was just
// imported, and its callers, refused until now, get in at once.
func (c *keyCache) forgetUnknown(h apikey.Hash) {
	c.mu.Lock()
	delete(c.unknown, h)
	c.mu.Unlock()
}
