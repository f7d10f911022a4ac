// Package boltstore keeps the backend's links, secrets and reports in one
// embedded bbolt file, for single-machine deployments that run no Redis.
//
// bbolt serialises write transactions, so every read-modify-write here (slug
// creation, visit counting, consuming a view_once secret, reserving a
// passcode attempt: attempts.go) is one Update transaction and therefore
// atomic, also across goroutines (concurrent visits share one: visits.go).
// Expiry is checked on every read against the store's clock; a janitor
// deletes expired records in the background, but correctness never depends
// on it having run.
package boltstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/keygate/keygate/backend/store"
)

// Bucket names. The schema is versioned by the meta bucket so that a future
// layout change can migrate instead of misreading old data.
var (
	bucketMeta    = []byte("meta")
	bucketLinks   = []byte("links")   // slug -> JSON linkRecord; NextSequence = link ids
	bucketOwners  = []byte("owners")  // owner key -> uint64 id; NextSequence = owner ids
	bucketSecrets = []byte("secrets") // id -> JSON store.Secret
	bucketGone    = []byte("gone")    // id -> uint64 ms deadline of the tombstone
	bucketReports = []byte("reports") // uint64 seq -> JSON store.Report
	// passcode attempts: id -> JSON attemptsRecord (attempts.go). Added in
	// schema 1 without a migration: Open creates it in an older file.
	bucketAttempts = []byte("attempts")

	keySchema = []byte("schema")
)

const schemaVersion = "1"

// DefaultSweepInterval is how often the janitor deletes expired records.
const DefaultSweepInterval = 10 * time.Minute

// Options configure Open.
type Options struct {
	store.Config
	// SweepInterval between janitor runs; 0 means DefaultSweepInterval,
	// negative disables the janitor (tests call Sweep themselves).
	SweepInterval time.Duration
}

// Store implements store.Store on a bbolt file.
type Store struct {
	db  *bolt.DB
	cfg store.Config

	visits visitBatcher

	stop     chan struct{}
	done     sync.WaitGroup
	closeErr error
	once     sync.Once
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database file at path with mode 0600.
// It fails after a second, instead of hanging, when another process holds
// the file.
func Open(path string, opts Options) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: %s is locked by another process (a backend running on it?): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketLinks, bucketOwners, bucketSecrets, bucketGone, bucketReports, bucketAttempts} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("unsupported schema version %q (want %s)", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("boltstore: initialising %s: %w", path, err)
	}
	s := &Store{db: db, cfg: opts.Config.WithDefaults(), stop: make(chan struct{})}
	interval := opts.SweepInterval
	if interval == 0 {
		interval = DefaultSweepInterval
	}
	if interval > 0 {
		s.done.Add(1)
		go s.janitor(interval)
	}
	return s, nil
}

// Ping implements store.Store.
func (s *Store) Ping(context.Context) error {
	return s.db.View(func(*bolt.Tx) error { return nil })
}

// Close stops the janitor and closes the file. It is safe to call twice.
func (s *Store) Close() error {
	s.once.Do(func() {
		close(s.stop)
		s.done.Wait()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

func (s *Store) janitor(every time.Duration) {
	defer s.done.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			_, _ = s.Sweep()
		}
	}
}

// sweepBatch is how many records one of Sweep's write transactions
// deletes: writes (redirects, new secrets) wait for one batch, not for the
// whole sweep.
const sweepBatch = 250

// Sweep deletes expired secrets, tombstones and passcode-attempt records
// whose window has ended, and returns how many records it removed. Reads
// never need it; it only reclaims space. It finds them in a read
// transaction, which writes do not wait for, and deletes them in batches,
// each checked again in its write transaction.
func (s *Store) Sweep() (int, error) {
	now := s.cfg.Now()
	sweeps := []struct {
		bucket  []byte
		expired func([]byte, time.Time) bool
		keys    [][]byte
	}{{bucket: bucketSecrets, expired: secretExpired}, {bucket: bucketGone, expired: tombstoneExpired},
		{bucket: bucketAttempts, expired: attemptsExpired}}
	err := s.db.View(func(tx *bolt.Tx) error {
		for i := range sweeps {
			sw := &sweeps[i]
			err := tx.Bucket(sw.bucket).ForEach(func(k, v []byte) error {
				if sw.expired(v, now) {
					sw.keys = append(sw.keys, append([]byte(nil), k...))
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, sweep := range sweeps {
		for batch := range slices.Chunk(sweep.keys, sweepBatch) {
			n := 0
			err := s.db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket(sweep.bucket)
				for _, k := range batch {
					if v := b.Get(k); v != nil && sweep.expired(v, now) {
						if err := b.Delete(k); err != nil {
							return err
						}
						n++
					}
				}
				return nil
			})
			if err != nil {
				return removed, err
			}
			removed += n
		}
	}
	return removed, nil
}

// secretExpired reports whether the stored secret v has expired at now (or
// does not decode: it could never be read either).
func secretExpired(v []byte, now time.Time) bool {
	var sec struct {
		ExpiresAt time.Time `json:"expiresAt"`
	}
	return json.Unmarshal(v, &sec) != nil || !now.Before(sec.ExpiresAt)
}

// tombstoneExpired reports whether the stored tombstone deadline v has
// passed at now.
func tombstoneExpired(v []byte, now time.Time) bool {
	return len(v) != 8 || !now.Before(fromMS(int64(binary.BigEndian.Uint64(v))))
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// ctxErr lets a cancelled request skip waiting for the write lock. bbolt
// itself takes no context.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: %w", err)
	}
	return nil
}

// ---- links

// linkRecord is the stored form of a link: times in Unix ms like Redis.
type linkRecord struct {
	ID            int64  `json:"id"`
	URL           string `json:"url"`
	OwnerID       int64  `json:"ownerId"`
	CreatedAt     int64  `json:"createdAt"`
	LastVisitedAt int64  `json:"lastVisitedAt"`
	VisitCount    int64  `json:"visitCount"`
}

func (r linkRecord) link(slug string) store.Link {
	return store.Link{
		ID: r.ID, Slug: slug, URL: r.URL, OwnerID: r.OwnerID,
		CreatedAt: fromMS(r.CreatedAt), LastVisitedAt: fromMS(r.LastVisitedAt), VisitCount: r.VisitCount,
	}
}

func getLink(b *bolt.Bucket, slug string) (linkRecord, error) {
	v := b.Get([]byte(slug))
	if v == nil {
		return linkRecord{}, store.ErrNotFound
	}
	var r linkRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return linkRecord{}, fmt.Errorf("boltstore: decoding link %q: %w", slug, err)
	}
	return r, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, body)
}

// CreateLink implements store.LinkStore.
func (s *Store) CreateLink(ctx context.Context, nl store.NewLink) (store.Link, error) {
	if err := ctxErr(ctx); err != nil {
		return store.Link{}, err
	}
	var rec linkRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLinks)
		if b.Get([]byte(nl.Slug)) != nil {
			return store.ErrSlugTaken
		}
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		rec = linkRecord{ID: int64(id), URL: nl.URL, OwnerID: nl.OwnerID, CreatedAt: ms(nl.CreatedAt)}
		return putJSON(b, []byte(nl.Slug), rec)
	})
	if err != nil {
		if errors.Is(err, store.ErrSlugTaken) {
			return store.Link{}, err
		}
		return store.Link{}, fmt.Errorf("boltstore: creating link: %w", err)
	}
	return rec.link(nl.Slug), nil
}

// GetLink implements store.LinkStore.
func (s *Store) GetLink(ctx context.Context, slug string) (store.Link, error) {
	if err := ctxErr(ctx); err != nil {
		return store.Link{}, err
	}
	var rec linkRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = getLink(tx.Bucket(bucketLinks), slug)
		return err
	})
	if err != nil {
		return store.Link{}, err
	}
	return rec.link(slug), nil
}

// VisitLink implements store.LinkStore. Concurrent visits share a write
// transaction (visits.go); an unknown slug costs only a read.
func (s *Store) VisitLink(ctx context.Context, slug string, at time.Time) (store.Link, error) {
	if err := ctxErr(ctx); err != nil {
		return store.Link{}, err
	}
	if _, err := s.GetLink(ctx, slug); err != nil {
		return store.Link{}, err
	}
	v := &visit{slug: slug, at: ms(at), done: make(chan bool, 1)}
	s.countVisit(v)
	if v.err != nil {
		return store.Link{}, v.err
	}
	return v.rec.link(slug), nil
}

// OwnerID implements store.LinkStore.
func (s *Store) OwnerID(ctx context.Context, key string) (int64, error) {
	if err := ctxErr(ctx); err != nil {
		return 0, err
	}
	// Most calls find the owner: try a read transaction before taking the
	// write lock.
	var id uint64
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketOwners).Get([]byte(key)); len(v) == 8 {
			id = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	if id != 0 {
		return int64(id), nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOwners)
		if v := b.Get([]byte(key)); len(v) == 8 { // created since the read above
			id = binary.BigEndian.Uint64(v)
			return nil
		}
		var err error
		if id, err = b.NextSequence(); err != nil {
			return err
		}
		return b.Put([]byte(key), u64(id))
	})
	if err != nil {
		return 0, fmt.Errorf("boltstore: owner id: %w", err)
	}
	return int64(id), nil
}

// ---- secrets

// tombstoned reports whether id has a live tombstone at now.
func tombstoned(tx *bolt.Tx, id []byte, now time.Time) bool {
	v := tx.Bucket(bucketGone).Get(id)
	return v != nil && !tombstoneExpired(v, now)
}

// CreateSecret implements store.SecretStore.
func (s *Store) CreateSecret(ctx context.Context, sec store.Secret) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	now := s.cfg.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, id := tx.Bucket(bucketSecrets), []byte(sec.ID)
		if v := b.Get(id); v != nil {
			// An expired secret no longer owns its id.
			var old store.Secret
			if json.Unmarshal(v, &old) == nil && now.Before(old.ExpiresAt) {
				return store.ErrIDTaken
			}
		}
		if tombstoned(tx, id, now) {
			return store.ErrIDTaken
		}
		return putJSON(b, id, sec)
	})
	if err != nil {
		if errors.Is(err, store.ErrIDTaken) {
			return err
		}
		return fmt.Errorf("boltstore: creating secret: %w", err)
	}
	return nil
}

// errReplaced: the view_once secret authorised was replaced, its id reused
// after expiry, before the write transaction consuming it began.
var errReplaced = errors.New("boltstore: secret replaced")

// OpenSecret implements store.SecretStore. A secret that is not view_once is
// read in a read-only transaction; a view_once one is authorised, then
// checked again and consumed in a single write transaction, which is what
// makes the reader unique. authorize runs outside both transactions: it may
// use the store (a write transaction in it would wait for its own).
// Secrets are immutable, so the one authorised is the one consumed unless
// its id was reused after expiry in between: then the new one is read and
// authorised in turn.
func (s *Store) OpenSecret(ctx context.Context, id string, authorize func(store.Secret) error) (store.Secret, error) {
	for {
		sec, err := s.openSecret(ctx, id, authorize)
		if !errors.Is(err, errReplaced) {
			return sec, err
		}
	}
}

// openSecret is one try of OpenSecret: errReplaced asks for another.
func (s *Store) openSecret(ctx context.Context, id string, authorize func(store.Secret) error) (store.Secret, error) {
	if err := ctxErr(ctx); err != nil {
		return store.Secret{}, err
	}
	now := s.cfg.Now()
	sec, err := s.readSecret(id, now)
	if err != nil {
		return store.Secret{}, err
	}
	if authorize != nil {
		if err := authorize(sec); err != nil {
			return store.Secret{}, err
		}
	}
	if !sec.ViewOnce() {
		return sec, nil
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, key := tx.Bucket(bucketSecrets), []byte(id)
		cur, err := readSecretTx(tx, key, now)
		if err != nil {
			return err
		}
		if !cur.CreatedAt.Equal(sec.CreatedAt) {
			return errReplaced
		}
		if err := b.Delete(key); err != nil {
			return err
		}
		return tx.Bucket(bucketGone).Put(key, u64(uint64(ms(now.Add(s.cfg.TombstoneTTL)))))
	})
	if err != nil {
		return store.Secret{}, err
	}
	return sec, nil
}

func (s *Store) readSecret(id string, now time.Time) (store.Secret, error) {
	var sec store.Secret
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		sec, err = readSecretTx(tx, []byte(id), now)
		return err
	})
	return sec, err
}

func readSecretTx(tx *bolt.Tx, id []byte, now time.Time) (store.Secret, error) {
	v := tx.Bucket(bucketSecrets).Get(id)
	if v != nil {
		var sec store.Secret
		if err := json.Unmarshal(v, &sec); err != nil {
			return store.Secret{}, fmt.Errorf("boltstore: decoding secret: %w", err)
		}
		if now.Before(sec.ExpiresAt) {
			return sec, nil
		}
		// Expired: fall through, exactly as if the janitor had run.
	}
	if tombstoned(tx, id, now) {
		return store.Secret{}, store.ErrGone
	}
	return store.Secret{}, store.ErrNotFound
}

// ---- reports

// AddReport implements store.ReportStore.
func (s *Store) AddReport(ctx context.Context, r store.Report) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketReports)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		if err := putJSON(b, u64(seq), r); err != nil {
			return err
		}
		// Keep the newest MaxReports: drop those with a smaller sequence
		// number than seq-MaxReports+1, the oldest kept (usually one).
		var dropped [][]byte // deleting under a cursor would skip keys
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k)+uint64(s.cfg.MaxReports) <= seq; k, _ = c.Next() {
			dropped = append(dropped, k)
		}
		for _, k := range dropped {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boltstore: storing report: %w", err)
	}
	return nil
}

// Reports implements store.ReportStore.
func (s *Store) Reports(ctx context.Context, limit int) ([]store.Report, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	var out []store.Report
	err := s.db.View(func(tx *bolt.Tx) error {
		// newest first from the end of the log, then turned around
		c := tx.Bucket(bucketReports).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var r store.Report
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("boltstore: decoding report: %w", err)
			}
			out = append(out, r)
		}
		return nil
	})
	slices.Reverse(out)
	return out, err
}
