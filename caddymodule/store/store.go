// Package store defines what keygate keeps: key records and rate-limit
// counters, behind one interface with two implementations — Redis (shared by
// any number of gateway replicas) and an embedded one (a single gateway,
// nothing to install). The conformance suite in storetest runs against both.
//
// The hot path is CheckKey: one call validates a key record and takes one
// request from its rate limit, atomically, in a single round trip.
package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keygate/keygate/caddymodule/apikey"
)

// Errors returned by the admin side of a Store.
var (
	ErrNotFound  = errors.New("no API key with that name")
	ErrNameTaken = errors.New("an API key with that name already exists")
	// ErrIDTaken is a CreateKey refused because a key has its id already:
	// another key, or the same one created before (an import racing
	// another, of a key changed in between).
	ErrIDTaken = errors.New("an API key with that id already exists")
	// ErrContended is a change given up after other changes to the same
	// key kept landing first; nothing of it was made.
	ErrContended = errors.New("key changed concurrently too often; try again")
	// ErrUnconfirmed wraps the error of a change whose write's answer was
	// lost and could not be read back (the store failing mid-change): it
	// may have been made. UpdateKey returns the key as changed with it, so
	// that a rotation's new secret is not lost in case it was; DeleteKey
	// returns it when the record's deletion failed so.
	ErrUnconfirmed = errors.New("the key store did not confirm the change: it may have been made")
	// ErrUnannounced wraps the error of a change that was made but whose
	// epoch (Store.Epoch) could not be moved: gateways holding leases may
	// admit the key as it was for up to MaxLease. UpdateKey returns the
	// changed key with it; the change stands (a rotation's new secret is
	// the only one that works).
	ErrUnannounced = errors.New("key changed, but gateways holding leases may admit it as it was for up to a minute")
)

// Key is a stored key record. It never holds the secret, only its hash.
type Key struct {
	ID         string      `json:"id"`
	Name       string      `json:"name"`
	Prefix     string      `json:"prefix"` // display prefix, e.g. "sk_a1b2c3d4…"
	Hash       apikey.Hash `json:"-"`
	Roles      []string    `json:"roles"`
	Owner      string      `json:"owner,omitempty"`
	Enabled    bool        `json:"enabled"`
	ExpiresAt  time.Time   `json:"expires_at,omitzero"`
	RateLimit  Policy      `json:"rate_limit,omitzero"` // the key's own limit; zero: the route's
	CreatedAt  time.Time   `json:"created_at"`
	LastUsedAt time.Time   `json:"last_used_at,omitzero"`
	// Revision grows on every change to the record, so caches can tell a
	// stale copy from a fresh one without comparing fields.
	Revision int64 `json:"revision"`
}

// Expired reports whether the key has an expiry that is not after now.
func (k *Key) Expired(now time.Time) bool {
	return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
}

// Policy is a rate limit: at most Limit requests in any Window. Its
// counters are a subject's per Limit, Window, algorithm and Zone: a route
// names a Zone to keep its budget apart from other routes of the same
// limit (a key's own limit, which has none, takes its route's).
type Policy struct {
	Limit  int64         `json:"limit"`
	Window time.Duration `json:"window"`
	Zone   string        `json:"zone,omitempty"` // empty: shared by every route without one
}

// IsZero reports whether the policy is unset (no limiting).
func (p Policy) IsZero() bool { return p.Limit <= 0 || p.Window <= 0 }

// String renders the policy the way the CLI takes it, e.g. "100/10m0s".
func (p Policy) String() string { return fmt.Sprintf("%d/%s", p.Limit, p.Window) }

// WindowOffset is where the sliding_window windows of a subject (kind 'k'
// and a key id, or 's' and an anonymous subject) start within each period
// of window: a hash of the subject, the same on every gateway. Spread so,
// the windows of many subjects do not all end at once; aligned, every
// gateway holding leases would ask for every busy subject's next one in
// the same moment.
func WindowOffset(kind byte, subject string, window time.Duration) time.Duration {
	ms := window.Milliseconds()
	if ms <= 0 {
		return 0
	}
	// FNV-1a, 64 bits
	h := uint64(14695981039346656037)
	h = (h ^ uint64(kind)) * 1099511628211
	for i := 0; i < len(subject); i++ {
		h = (h ^ uint64(subject[i])) * 1099511628211
	}
	return time.Duration(h%uint64(ms)) * time.Millisecond
}

// WindowStart is when the fixed window that holds now starts, in Unix
// milliseconds, for windows of window ms that begin offset ms
// (WindowOffset) into each period: how both stores reckon a subject's
// sliding_window windows (the Redis script in Lua).
func WindowStart(now, offset, window int64) int64 {
	r := (now - offset) % window
	if r < 0 {
		r += window
	}
	return now - r
}

// Algorithm names a sliding-window rate-limiting algorithm.
type Algorithm string

const (
	// SlidingWindow is the sliding-window counter: the current fixed window's
	// count plus the previous one's, weighted by how much of it still
	// overlaps the sliding window. O(1) memory per subject; may admit a few
	// requests over the limit when traffic is bursty at window edges. Each
	// subject's fixed windows start at its own WindowOffset.
	SlidingWindow Algorithm = "sliding_window"
	// SlidingLog keeps one timestamp per admitted request: exact, never
	// admits more than the limit in any window, O(limit) memory per subject.
	SlidingLog Algorithm = "sliding_log"
)

// Valid reports whether a is a known algorithm.
func (a Algorithm) Valid() bool { return a == SlidingWindow || a == SlidingLog }

// KeyStatus is the outcome of validating a key record.
type KeyStatus int

const (
	KeyValid    KeyStatus = iota
	KeyUnknown            // no record, or the record now holds another hash (rotated)
	KeyDisabled           // revoked
	KeyExpired
)

// Check asks the store to validate one request's key and, when Policy is
// set, count the request against it.
type Check struct {
	KeyID     string
	Hash      apikey.Hash
	Revision  int64 // the caller's cached revision; a different stored one comes back in Verdict.Fresh
	Policy    Policy
	Algorithm Algorithm
	Ask
}

// Ask is how much a caller takes from a limit at once: its own request,
// or a lease of several for it to admit itself. The zero Ask takes one.
type Ask struct {
	// Take asks for a lease: up to Take requests counted at once, for the
	// caller to admit itself (0 or 1: just this request).
	Take int64
	// Spread is how long the caller expects to take to admit a sliding_log
	// lease's requests: they are logged one after another across it (see
	// Decision.Staggered). Rounded up to whole seconds, at most MaxLease;
	// zero: MaxLease. A sliding_window lease lasts to its window's end
	// whatever Spread says.
	Spread time.Duration
	// Ahead asks for a lease taken ahead of time, with no request of the
	// caller's own in it: every request Granted is the lease's, and a
	// sliding_log lease logs them all across it, none at the call's moment
	// (which would have lapsed unused). A store that grants one request at
	// a time (the local store) grants that one at the call's moment, so a
	// caller asks ahead only for a lease it already holds from the store.
	Ahead bool
}

// MaxLimit is the most requests a Policy may admit in its window: the
// Redis scripts count in Lua's doubles, exact only to 2^53, and a limit
// past 2^63 would turn X-RateLimit-Remaining negative.
const MaxLimit = 1_000_000_000_000_000

// MaxLease is the longest a gateway may admit a lease's requests. Whatever
// its length, a gateway keeps using a key's lease only while it has
// confirmed, within the last second, that no key changed since
// (Store.Epoch); the bound keeps what a gateway remembers of clients short.
const MaxLease = time.Minute

// Verdict is the answer to a Check.
type Verdict struct {
	Status KeyStatus
	// Fresh is the current record when its revision differs from the one in
	// the Check (the caller's copy is stale), else nil.
	Fresh *Key
	// Limit is the rate-limit decision; meaningful only when Status is
	// KeyValid and the Check had a Policy.
	Limit Decision
}

// Decision is one rate-limit decision.
type Decision struct {
	Allowed    bool
	Limit      int64
	Remaining  int64
	Reset      time.Time     // when the window resets (allowed) or a request will be admitted again (denied)
	RetryAfter time.Duration // zero when allowed
	// Granted is how many requests were counted when allowed: 1, or up to
	// the Take asked for, never past the limit. A store may always grant 1.
	// A gateway that admits a request from a lease says 0: it was counted
	// with the lease.
	Granted int64
	// Lease is how long, from before the call, the caller may admit the
	// lease's requests: the Granted-1 beyond its own, or all Granted when
	// asked Ahead (at most MaxLease). A sliding_window lease counts them in
	// the current window and lasts to its end.
	Lease time.Duration
	// Staggered says the lease's requests have deadlines of their own
	// (sliding_log): the i-th of the n (Leased) was logged at
	// StaggeredDeadline(i, n, Lease) after the call, the latest moment it
	// may be admitted, so that it stays counted a full window after it is.
	// Spread over the lease rather than all at its end, a request admitted
	// on time stays counted little longer than its window.
	Staggered bool
}

// Leased is how many of the requests d granted are a lease's, for the
// caller to admit later: all of them when asked Ahead, else all but the
// caller's own.
func (d Decision) Leased(ahead bool) int64 {
	if ahead {
		return d.Granted
	}
	return max(d.Granted-1, 0)
}

// StaggeredDeadline is when the i-th (from 1) of n staggered requests of a
// lease lasting lease was logged, counted from the call: ⌊i·lease/n⌋ in
// whole milliseconds, the arithmetic of the Redis script.
func StaggeredDeadline(i, n int64, lease time.Duration) time.Duration {
	return time.Duration(i*lease.Milliseconds()/n) * time.Millisecond
}

// Store keeps keys and rate-limit counters. Implementations are safe for
// concurrent use.
type Store interface {
	// CheckKey validates the record of Check.KeyID against Check.Hash and
	// takes one request from its limit, atomically, in one round trip.
	CheckKey(ctx context.Context, c Check) (Verdict, error)
	// Limit takes one request (or a lease, as Check.Ask) from the limit of
	// an arbitrary subject (a client IP for anonymous callers).
	Limit(ctx context.Context, subject string, p Policy, a Algorithm, ask Ask) (Decision, error)
	// KeyIDByHash finds the id of the key with that hash: the cold path,
	// taken only when a gateway sees a key for the first time.
	KeyIDByHash(ctx context.Context, h apikey.Hash) (string, error)

	// CreateKey stores a new key; ErrNameTaken when the name is in use,
	// ErrIDTaken when a key has the id already.
	CreateKey(ctx context.Context, k Key) error
	// Keys lists every key in SortKeys order.
	Keys(ctx context.Context) ([]Key, error)
	// KeyByName returns one key; ErrNotFound when there is none.
	KeyByName(ctx context.Context, name string) (Key, error)
	// UpdateKey applies change to the named key and stores the result with
	// a new revision (see Changed: ID and CreatedAt cannot change). A new Name
	// must be free (ErrNameTaken otherwise); a new Hash replaces the old
	// one at once. With ErrUnannounced, the change was made and the key
	// returned is the changed one.
	UpdateKey(ctx context.Context, name string, change func(*Key) error) (Key, error)
	// DeleteKey removes the named key; with ErrUnannounced, it was removed.
	DeleteKey(ctx context.Context, name string) error
	// Epoch is a number that changes whenever a key is updated (renamed,
	// rotated, disabled, enabled …) or deleted, so that a gateway holding
	// leases learns of any change with one cheap call.
	Epoch(ctx context.Context) (int64, error)

	// Close releases the store's resources.
	Close() error
}

// BatchCreator is a Store that creates many keys faster together than one
// CreateKey each: the embedded store writes its whole file once, where one
// CreateKey each rewrites it per key (an import of 10,000 keys took 29 s).
type BatchCreator interface {
	// CreateKeys creates keys as CreateKey would each: refused[i] is
	// keys[i]'s own refusal (ErrNameTaken, ErrIDTaken), and the others are
	// created.
	// With an error none is. The ids and hashes of keys are new to the
	// store and to each other (names need not be).
	CreateKeys(ctx context.Context, keys []Key) (refused []error, err error)
}

// SortKeys puts keys in the order every store lists them: by creation time,
// then by name (keys created in the same instant).
func SortKeys(keys []Key) {
	slices.SortFunc(keys, func(a, b Key) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// Changed returns old with change applied, as UpdateKey stores it: the
// change works on its own copy, cannot alter ID or CreatedAt, and the
// result has the next revision.
func Changed(old Key, change func(*Key) error) (Key, error) {
	k := old
	k.Roles = slices.Clone(old.Roles)
	if err := change(&k); err != nil {
		return Key{}, err
	}
	k.ID, k.CreatedAt, k.Revision = old.ID, old.CreatedAt, old.Revision+1
	return k, nil
}
