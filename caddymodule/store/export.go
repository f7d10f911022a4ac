package store

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/keygate/keygate/caddymodule/apikey"
)

// ExportVersion is the version of the Export format.
const ExportVersion = 1

// Export is every key of a store with its hash (a store holds no secret):
// what the admin API's GET /keygate/export answers and POST /keygate/import
// takes, and what the embedded store keeps in its keys.json, so that its
// file can be imported into Redis as it is.
type Export struct {
	Version int           `json:"version"`
	Keys    []ExportedKey `json:"keys"`
}

// MarshalLines encodes e as the embedded store lays out its keys.json: one
// key a line, in a few indented lines. The file stays about the size of
// the compact JSON the admin API sends and an import takes (indented
// throughout, it was a third larger, and past the import's limit first),
// and a person can still read it and diff it.
func (e Export) MarshalLines() ([]byte, error) {
	b := AppendExportStart(nil)
	for i, k := range e.Keys {
		line, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		b = append(AppendExportKeyStart(b, i), line...)
	}
	return AppendExportEnd(b), nil
}

// AppendExportStart, AppendExportKeyStart (before the i-th key's JSON) and
// AppendExportEnd lay out an Export of ExportVersion a key a line
// (MarshalLines).
func AppendExportStart(b []byte) []byte {
	return fmt.Appendf(b, "{\n  \"version\": %d,\n  \"keys\": [", ExportVersion)
}

func AppendExportKeyStart(b []byte, i int) []byte {
	if i > 0 {
		b = append(b, ',')
	}
	return append(b, "\n    "...)
}

func AppendExportEnd(b []byte) []byte { return append(b, "\n  ]\n}\n"...) }

// KeySet holds the ids, hashes and names of the keys of an export added so
// far: an export (an import's, or keys.json) names each key once.
type KeySet struct {
	ids, names map[string]bool
	hashes     map[apikey.Hash]bool
}

// NewKeySet is an empty KeySet with room for n keys.
func NewKeySet(n int) *KeySet {
	return &KeySet{ids: make(map[string]bool, n), names: make(map[string]bool, n), hashes: make(map[apikey.Hash]bool, n)}
}

// Add adds k, and says what of it a key added before had: "id", "sha256"
// or "name", or "" when nothing.
func (s *KeySet) Add(k Key) (repeats string) {
	switch {
	case seenBefore(s.ids, k.ID):
		return "id"
	case seenBefore(s.hashes, k.Hash):
		return "sha256"
	case seenBefore(s.names, k.Name):
		return "name"
	}
	return ""
}

// seenBefore adds v to seen, and reports whether it was there.
func seenBefore[V comparable](seen map[V]bool, v V) bool {
	if seen[v] {
		return true
	}
	seen[v] = true
	return false
}

// ExportedKey is one key of an Export.
type ExportedKey struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Prefix     string    `json:"prefix"`
	Hash       string    `json:"sha256"` // lowercase hex
	Roles      []string  `json:"roles,omitempty"`
	Owner      string    `json:"owner,omitempty"`
	Enabled    bool      `json:"enabled"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	Limit      int64     `json:"rate_limit,omitempty"`
	WindowMS   int64     `json:"rate_window_ms,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	Revision   int64     `json:"revision"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"` // last: the embedded store appends it
}

// Exported is k as an Export holds it.
func Exported(k Key) ExportedKey {
	return ExportedKey{
		ID: k.ID, Name: k.Name, Prefix: k.Prefix, Hash: k.Hash.String(), Roles: k.Roles, Owner: k.Owner,
		Enabled: k.Enabled, ExpiresAt: k.ExpiresAt, Limit: k.RateLimit.Limit, WindowMS: k.RateLimit.Window.Milliseconds(),
		CreatedAt: k.CreatedAt, Revision: k.Revision, LastUsedAt: k.LastUsedAt,
	}
}

// maxWindowMS is the longest rate_window_ms a time.Duration holds.
const maxWindowMS = math.MaxInt64 / int64(time.Millisecond)

// Key is the key e holds; an error if its hash is not 64 hex digits or its
// window does not fit a time.Duration (it would wrap around).
func (e ExportedKey) Key() (Key, error) {
	if e.WindowMS < 0 || e.WindowMS > maxWindowMS {
		return Key{}, fmt.Errorf("key %q: rate_window_ms %d is not between 0 and %d", e.Name, e.WindowMS, maxWindowMS)
	}
	k := Key{
		ID: e.ID, Name: e.Name, Prefix: e.Prefix, Roles: e.Roles, Owner: e.Owner, Enabled: e.Enabled,
		ExpiresAt: e.ExpiresAt, CreatedAt: e.CreatedAt, LastUsedAt: e.LastUsedAt, Revision: e.Revision,
		RateLimit: Policy{Limit: e.Limit, Window: time.Duration(e.WindowMS) * time.Millisecond},
	}
	raw, err := hex.DecodeString(e.Hash)
	if err != nil || len(raw) != len(apikey.Hash{}) {
		return Key{}, fmt.Errorf("key %q has a malformed sha256", e.Name)
	}
	copy(k.Hash[:], raw)
	return k, nil
}
