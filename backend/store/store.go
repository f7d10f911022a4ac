// Package store defines the persistence interfaces of the keygate backend:
// short links, one-time secrets and abuse reports. Two implementations exist
// (redisstore for several replicas, boltstore for a single machine); both must
// pass the conformance suite in storetest, which is what keeps them from
// drifting apart.
//
// Every guarantee the HTTP API makes that depends on concurrency or time is
// made here, by the store, atomically: exactly one creator of a slug wins,
// exactly one reader of a view_once secret gets it, no more than the limit
// of passcode attempts on a secret are held in a window, and an expired
// secret is never returned even if no cleanup ever ran.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors every implementation returns (possibly wrapped; test with errors.Is).
var (
	// ErrNotFound: the link or secret does not exist, or has expired.
	ErrNotFound = errors.New("store: not found")
	// ErrGone: the secret existed, was view_once and has been read.
	ErrGone = errors.New("store: gone")
	// ErrSlugTaken: CreateLink lost to an existing link with the same slug.
	ErrSlugTaken = errors.New("store: slug already exists")
	// ErrIDTaken: CreateSecret was given an id that is (or was) in use.
	ErrIDTaken = errors.New("store: id already exists")
)

// Unavailabler is implemented by a store that can tell, of an error of its
// own, that it is not serving for now (worth a retry: 503), beyond the
// network errors the backend recognises itself: say, Redis loading its
// data, or a replica that a failover left read-only.
type Unavailabler interface {
	Unavailable(err error) bool
}

// Store is everything the backend persists. Close releases the underlying
// connection or file; using the store afterwards is an error.
type Store interface {
	LinkStore
	SecretStore
	ReportStore
	// Ping reports whether the store can serve requests.
	Ping(ctx context.Context) error
	Close() error
}

// Link is one short link. Times are kept with millisecond precision
// (truncated).
type Link struct {
	ID        int64  // allocated by the store, > 0, never reused
	Slug      string // unique, case-sensitive
	URL       string // absolute http(s) target
	OwnerID   int64  // 0 when created anonymously
	CreatedAt time.Time
	// LastVisitedAt is the zero time until the first visit.
	LastVisitedAt time.Time
	VisitCount    int64
}

// NewLink is what CreateLink needs; the store fills in the rest.
type NewLink struct {
	Slug      string
	URL       string
	OwnerID   int64
	CreatedAt time.Time
}

// LinkStore keeps short links and the integer ids of their owners.
type LinkStore interface {
	// CreateLink stores a link under nl.Slug unless one exists already, in
	// which case it returns ErrSlugTaken and changes nothing. Of any number
	// of concurrent calls for one slug exactly one succeeds. The id is only
	// allocated for the winner.
	CreateLink(ctx context.Context, nl NewLink) (Link, error)
	// GetLink returns the link with that slug, or ErrNotFound.
	GetLink(ctx context.Context, slug string) (Link, error)
	// VisitLink atomically counts one visit at time at and returns the link
	// as updated, or ErrNotFound. Concurrent visits are all counted.
	VisitLink(ctx context.Context, slug string, at time.Time) (Link, error)
	// OwnerID returns the integer id of the owner named key, allocating the
	// next one on first use. Concurrent first uses agree on one id.
	OwnerID(ctx context.Context, key string) (int64, error)
}

// Expiry types of SecLink secrets.
const (
	ViewOnce = "view_once"
	OneHour  = "1hour"
	OneDay   = "24hours"
	OneWeek  = "7days"
)

// Secret is an encrypted blob; the backend never sees the plaintext.
type Secret struct {
	ID            string    `json:"id"`
	EncryptedBlob string    `json:"encryptedBlob"`
	IV            string    `json:"iv"`
	ExpiryType    string    `json:"expiryType"`
	PasscodeHash  string    `json:"passcodeHash,omitempty"` // empty: no passcode
	CreatedAt     time.Time `json:"createdAt"`
	ExpiresAt     time.Time `json:"expiresAt"`
}

// ViewOnce reports whether the first successful read destroys the secret.
func (s Secret) ViewOnce() bool { return s.ExpiryType == ViewOnce }

// SecretStore keeps secrets until they expire or, for view_once secrets,
// until they are read once.
type SecretStore interface {
	// CreateSecret stores s until s.ExpiresAt. It returns ErrIDTaken if a
	// secret or a tombstone with that id exists (the caller picks a new id).
	CreateSecret(ctx context.Context, s Secret) error
	// OpenSecret reads the secret with that id. It returns ErrNotFound if it
	// never existed or has expired, and ErrGone if it was a view_once secret
	// that has been read (for as long as the tombstone lives).
	//
	// authorize, if not nil, sees the secret first; if it returns an error,
	// OpenSecret returns that error and the secret is left untouched (a wrong
	// passcode must not burn it). Otherwise a view_once secret is destroyed
	// and replaced by a tombstone: of any number of concurrent callers that
	// pass authorize, exactly one gets the secret and the others get ErrGone.
	// authorize runs outside the store's transactions, so it may call the
	// store itself (the backend reserves a passcode attempt in it); it runs
	// again, on the new secret, if the id was reused after expiry meanwhile.
	OpenSecret(ctx context.Context, id string, authorize func(Secret) error) (Secret, error)

	// ReservePasscodeAttempt reserves one of the limit passcode attempts that
	// the secret id may have in a window: the window begins with the first
	// reservation while none runs and lasts window (on Redis, by its own
	// clock). Reservations are counted atomically: of any number of
	// concurrent callers, across replicas, at most limit hold one per window.
	//
	// It returns a token that names the reservation (for
	// ReleasePasscodeAttempt) and the end of the window; when limit are
	// held already it reserves nothing and returns token "" and the end of the
	// running window, after which reservations start afresh. The count is
	// per id only: it neither needs nor checks a secret, and outlives nothing
	// that matters, expiring with its window (or with its last release).
	ReservePasscodeAttempt(ctx context.Context, id string, limit int, window time.Duration) (token string, until time.Time, err error)
	// ReleasePasscodeAttempt gives back the reservation token names (the
	// passcode was right): its slot is free again within the same window, and
	// a window in which none is held any more ends. Releasing a token twice,
	// or one whose window has ended, changes nothing.
	ReleasePasscodeAttempt(ctx context.Context, id, token string) error
}

// Report is an abuse report about a secret.
type Report struct {
	SecretID  string    `json:"secretId"`
	Reason    string    `json:"reason,omitempty"`
	Reporter  string    `json:"reporter,omitempty"` // key id, or "anonymous"
	RemoteIP  string    `json:"remoteIp,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

// ReportStore keeps abuse reports for a human to review. Reports do not
// expire: they are evidence. But anyone may report (the gateway limits how
// often), so a store keeps the newest Config.MaxReports and drops the
// oldest beyond: a flood of reports cannot fill the disk or Redis's memory.
type ReportStore interface {
	AddReport(ctx context.Context, r Report) error
	// Reports returns the newest limit reports (all, if fewer), oldest
	// first: the tail of the log.
	Reports(ctx context.Context, limit int) ([]Report, error)
}

// Config are the knobs both implementations share.
type Config struct {
	// TombstoneTTL is how long a read view_once secret answers ErrGone
	// before it becomes ErrNotFound. Default DefaultTombstoneTTL.
	TombstoneTTL time.Duration
	// Now is the clock; default time.Now. Only the embedded store can honour
	// a fake clock (Redis expires keys on its own clock), so the conformance
	// suite uses the real one.
	Now func() time.Time
	// MaxReports is how many abuse reports are kept, the newest. Default
	// DefaultMaxReports.
	MaxReports int
}

// DefaultTombstoneTTL keeps "viewed and destroyed" answers for a week.
const DefaultTombstoneTTL = 7 * 24 * time.Hour

// DefaultMaxReports keeps the newest 10,000 abuse reports: at most about
// 100 MB with the largest reasons (8 KiB bodies), far less in practice.
const DefaultMaxReports = 10_000

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.TombstoneTTL <= 0 {
		c.TombstoneTTL = DefaultTombstoneTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxReports <= 0 {
		c.MaxReports = DefaultMaxReports
	}
	return c
}
