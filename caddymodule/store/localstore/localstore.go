// Package localstore is keygate's embedded store: keys in one JSON file in
// Caddy's data directory, rate limits in this process. It is the default,
// for a single gateway with nothing installed; use redisstore as soon as
// more than one gateway replica serves the same keys.
package localstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/atomicfile"
)

const (
	// lastUsedEvery matches redisstore: last-used moves at most this often.
	lastUsedEvery = 10 * time.Second
	// flushEvery is how often changed last-used times are written out.
	flushEvery = 10 * time.Second
)

// Store is a store.Store on a local file and in-process counters.
type Store struct {
	path string

	// writeMu serialises changes, so each read-modify-write of the file is
	// atomic; mu guards the indexes, read-locked on the hot path.
	writeMu sync.Mutex
	mu      sync.RWMutex
	byID    map[string]*record
	byHash  map[apikey.Hash]string
	byName  map[string]string
	order   []string // every key's id, sorted: the file's order

	fileSize      int      // of the last write, under writeMu
	lock          *os.File // from Claim until Close (lockFile); nil: unclaimed, writes nothing
	logger        *zap.Logger
	lastUsedDirty atomic.Bool
	epoch         atomic.Int64 // bumped by every change to a key
	limits        *limiter
	stop          chan struct{}
	done          sync.WaitGroup
	closeOnce     sync.Once
	closeErr      error
}

// record is a stored key. key is never modified in place: a change stores a
// new record, so the hot path may read it without a lock.
type record struct {
	key      store.Key
	lastUsed atomic.Int64 // unix ms; moves on the hot path

	// fixed is the key's line in the file up to its last-used time (and
	// without the closing brace), encoded at the record's first write: a
	// write appends only the time, which moves. Used under writeMu alone.
	fixed []byte
}

var _ store.Store = (*Store)(nil)

// newRecord is the record of k, its last-used time in lastUsed.
func newRecord(k store.Key) *record {
	rec := &record{key: k}
	rec.key.LastUsedAt = time.Time{}
	if !k.LastUsedAt.IsZero() {
		rec.lastUsed.Store(k.LastUsedAt.UnixMilli())
	}
	return rec
}

// lockSuffix names the lock file beside the key file (lockFile).
const lockSuffix = ".lock"

// Open loads the key file at path (none yet: no keys). It writes nothing
// until Claim: a config that is only validated (keygate validate, beside
// the gateway that serves the file) opens the store too. logger (nil:
// none) hears of failures no caller sees: a background write of last-used
// times that failed.
func Open(path string, logger *zap.Logger) (*Store, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating key store directory: %v", err)
	}
	s := newIndexed(path)
	s.limits, s.stop, s.logger = newLimiter(), make(chan struct{}), logger
	if err := s.load(); err != nil {
		return nil, err
	}
	s.tighten(dir)
	s.done.Add(1)
	go s.background()
	return s, nil
}

// newIndexed is a store of path with empty indexes, for load to fill.
func newIndexed(path string) *Store {
	return &Store{path: path, byID: make(map[string]*record), byHash: make(map[apikey.Hash]string), byName: make(map[string]string)}
}

// Claim makes this process the key file's one writer until Close: a
// process that serves the store claims it as it starts, and a second one
// (another gateway on the same data directory, or a rolling restart that
// starts the new gateway before the old one stops) fails to (lockFile),
// rather than each rewriting the file from what it holds and dropping the
// other's changes. Claiming again is a no-op.
func (s *Store) Claim() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.lock != nil {
		return nil
	}
	lock, err := lockFile(s.path + lockSuffix)
	if err != nil {
		return err
	}
	// read again: the process that held the file until now may have
	// changed it since Open read it (a key disabled through it just before
	// it stopped), and this one's first write would undo that
	// into new indexes, swapped in only once read whole: requests go on
	// with the old ones meanwhile, and a file that does not load leaves
	// them as they were
	fresh := newIndexed(s.path)
	if err := fresh.load(); err != nil {
		lock.Close()
		return err
	}
	s.mu.Lock()
	s.byID, s.byHash, s.byName, s.order = fresh.byID, fresh.byHash, fresh.byName, fresh.order
	s.mu.Unlock()
	s.epoch.Add(1) // what was read before may have changed
	s.lock = lock
	return nil
}

// tighten makes the key file 0600 and its directory 0700, as writes create
// them: a file restored from a backup at 0644 would show the keys' hashes
// and names to every user of the host until the next change rewrote it.
// Best effort: a directory that is not this process's to change is warned
// of.
func (s *Store) tighten(dir string) {
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o700}, {s.path, 0o600}} {
		info, err := os.Stat(f.path)
		if err != nil || info.Mode().Perm()&^f.mode == 0 {
			continue
		}
		if err := os.Chmod(f.path, f.mode); err != nil {
			s.logger.Warn("key store readable by others", zap.String("path", f.path), zap.Error(err))
		}
	}
}

func (s *Store) load() error {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading key store: %v", err)
	}
	var f store.Export
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("key store %s is corrupt: %v", s.path, err)
	}
	if f.Version != store.ExportVersion {
		return fmt.Errorf("key store %s has version %d; this keygate reads version %d", s.path, f.Version, store.ExportVersion)
	}
	seen := store.NewKeySet(len(f.Keys))
	for i, fk := range f.Keys {
		k, err := fk.Key()
		if err != nil {
			return fmt.Errorf("key store %s: %v", s.path, err)
		}
		// a file edited or merged by hand: indexed, the second key would
		// take the first's name or hash over, and a change by name would
		// change another key than the one named
		if repeats := seen.Add(k); repeats != "" {
			return fmt.Errorf("key store %s: keys[%d], %q, has the %s of a key before it: the file names each key once (edited by hand?)", s.path, i, k.Name, repeats)
		}
		s.index(newRecord(k))
	}
	return nil
}

// index adds rec to the maps and its id to order; the caller holds mu (or
// owns s alone).
func (s *Store) index(rec *record) {
	if i, found := slices.BinarySearch(s.order, rec.key.ID); !found {
		s.order = slices.Insert(s.order, i, rec.key.ID)
	}
	s.mapRecord(rec)
}

// mergeIDs is order, sorted, with the ids of recs (not in it) merged in.
func mergeIDs(order []string, recs []*record) []string {
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.key.ID
	}
	slices.Sort(ids)
	merged := make([]string, 0, len(order)+len(ids))
	for len(order) > 0 && len(ids) > 0 {
		if order[0] < ids[0] {
			merged, order = append(merged, order[0]), order[1:]
		} else {
			merged, ids = append(merged, ids[0]), ids[1:]
		}
	}
	return append(append(merged, order...), ids...)
}

// mapRecord adds rec to the maps; the caller holds mu.
func (s *Store) mapRecord(rec *record) {
	s.byID[rec.key.ID] = rec
	s.byHash[rec.key.Hash] = rec.key.ID
	s.byName[rec.key.Name] = rec.key.ID
}

// unindex removes rec from the maps and order; the caller holds mu.
func (s *Store) unindex(rec *record) {
	if i, found := slices.BinarySearch(s.order, rec.key.ID); found {
		s.order = slices.Delete(s.order, i, i+1)
	}
	s.unmapRecord(rec)
}

// unmapRecord removes rec from the maps, not from order; the caller holds
// mu.
func (s *Store) unmapRecord(rec *record) {
	delete(s.byID, rec.key.ID)
	delete(s.byHash, rec.key.Hash)
	delete(s.byName, rec.key.Name)
}

// persist writes every key to the file atomically: a temp file in the same
// directory, fsynced, renamed over the old one, and the directory fsynced,
// so a crash leaves either the old file or the new one. The caller holds
// writeMu.
//
// The file is indented JSON with one key a line, each line but its
// last-used time kept from the key's first write: last-used times move on
// every flush (flushEvery), and with 10,000 keys in use, encoding every key
// again took about 50 ms of CPU per flush (BenchmarkFlushLastUsed).
func (s *Store) persist() error {
	if s.lock == nil {
		return fmt.Errorf("key store %s is not claimed by this process (Claim)", s.path)
	}
	s.mu.RLock()
	recs := make([]*record, len(s.order))
	for i, id := range s.order {
		recs[i] = s.byID[id]
	}
	s.mu.RUnlock()
	buf := store.AppendExportStart(make([]byte, 0, s.fileSize+512))
	for i, rec := range recs {
		buf = store.AppendExportKeyStart(buf, i)
		var err error
		if buf, err = rec.appendLine(buf); err != nil {
			return err
		}
	}
	buf = store.AppendExportEnd(buf)
	s.fileSize = len(buf)
	return writeFileAtomic(s.path, buf)
}

// appendLine appends rec's line in the file to b: what json.Marshal makes of
// its store.ExportedKey, the fixed part encoded once. The caller holds writeMu.
func (rec *record) appendLine(b []byte) ([]byte, error) {
	if rec.fixed == nil {
		k := rec.key
		k.LastUsedAt = time.Time{} // appended below, as it moves
		fixed, err := json.Marshal(store.Exported(k))
		if err != nil {
			return b, err
		}
		rec.fixed = fixed[:len(fixed)-1]
	}
	b = append(b, rec.fixed...)
	if used := rec.lastUsed.Load(); used > 0 {
		// as time.Time's MarshalJSON writes it
		b = append(b, `,"last_used_at":"`...)
		b = time.UnixMilli(used).UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	return append(b, '}'), nil
}

func writeFileAtomic(path string, data []byte) error {
	if err := atomicfile.Write(path, data); err != nil {
		return fmt.Errorf("writing key store: %v", err)
	}
	return nil
}

// snapshot returns a copy of rec's key with its current last-used time.
func (s *Store) snapshot(rec *record) store.Key {
	k := rec.key
	k.Roles = slices.Clone(k.Roles)
	if ms := rec.lastUsed.Load(); ms > 0 {
		k.LastUsedAt = time.UnixMilli(ms).UTC()
	}
	return k
}

func (s *Store) lookup(id string) *record {
	s.mu.RLock()
	rec := s.byID[id]
	s.mu.RUnlock()
	return rec
}

// CheckKey implements store.Store.
func (s *Store) CheckKey(_ context.Context, c store.Check) (store.Verdict, error) {
	rec := s.lookup(c.KeyID)
	if rec == nil || rec.key.Hash != c.Hash {
		return store.Verdict{Status: store.KeyUnknown}, nil
	}
	now := time.Now()
	var v store.Verdict
	if rec.key.Revision != c.Revision {
		fresh := s.snapshot(rec)
		v.Fresh = &fresh
	}
	switch {
	case !rec.key.Enabled:
		v.Status = store.KeyDisabled
		return v, nil
	case rec.key.Expired(now):
		v.Status = store.KeyExpired
		return v, nil
	}
	nowMS := now.UnixMilli()
	if last := rec.lastUsed.Load(); nowMS-last >= lastUsedEvery.Milliseconds() && rec.lastUsed.CompareAndSwap(last, nowMS) {
		s.lastUsedDirty.Store(true)
	}
	if !c.Policy.IsZero() {
		v.Limit = s.limits.take(counterKey{'k', c.KeyID, c.Algorithm, c.Policy.Limit, c.Policy.Window.Milliseconds(), c.Policy.Zone}, nowMS)
	}
	return v, nil
}

// Limit implements store.Store. The limits are in this process, so a lease
// would save nothing: it grants one request at a time whatever ask says.
func (s *Store) Limit(_ context.Context, subject string, p store.Policy, a store.Algorithm, _ store.Ask) (store.Decision, error) {
	ck := counterKey{'s', subject, a, p.Limit, p.Window.Milliseconds(), p.Zone}
	return s.limits.take(ck, time.Now().UnixMilli()), nil
}

// KeyIDByHash implements store.Store.
func (s *Store) KeyIDByHash(_ context.Context, h apikey.Hash) (string, error) {
	s.mu.RLock()
	id, ok := s.byHash[h]
	s.mu.RUnlock()
	if !ok {
		return "", store.ErrNotFound
	}
	return id, nil
}

// CreateKey implements store.Store.
func (s *Store) CreateKey(ctx context.Context, k store.Key) error {
	refused, err := s.CreateKeys(ctx, []store.Key{k})
	if err != nil {
		return err
	}
	return refused[0]
}

// CreateKeys implements store.BatchCreator: the file is written once.
func (s *Store) CreateKeys(_ context.Context, keys []store.Key) ([]error, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	refused := make([]error, len(keys))
	added := make([]*record, 0, len(keys))
	s.mu.Lock()
	for i, k := range keys {
		if _, taken := s.byID[k.ID]; taken { // first, as on Redis
			refused[i] = store.ErrIDTaken
			continue
		}
		if _, taken := s.byName[k.Name]; taken {
			refused[i] = store.ErrNameTaken
			continue
		}
		k.Revision = 1
		k.Roles = slices.Clone(k.Roles)
		rec := newRecord(k) // an imported key's last use too
		s.mapRecord(rec)
		added = append(added, rec)
	}
	s.order = mergeIDs(s.order, added) // one insertion each was quadratic
	s.mu.Unlock()
	if len(added) == 0 {
		return refused, nil
	}
	if err := s.persist(); err != nil {
		s.mu.Lock()
		for _, rec := range added {
			s.unmapRecord(rec)
		}
		s.order = slices.DeleteFunc(s.order, func(id string) bool { _, ok := s.byID[id]; return !ok })
		s.mu.Unlock()
		return nil, err
	}
	return refused, nil
}

// Keys implements store.Store.
func (s *Store) Keys(context.Context) ([]store.Key, error) {
	s.mu.RLock()
	keys := make([]store.Key, 0, len(s.byID))
	for _, rec := range s.byID {
		keys = append(keys, s.snapshot(rec))
	}
	s.mu.RUnlock()
	store.SortKeys(keys)
	return keys, nil
}

// KeyByName implements store.Store.
func (s *Store) KeyByName(_ context.Context, name string) (store.Key, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.byName[name]
	if !ok {
		return store.Key{}, store.ErrNotFound
	}
	return s.snapshot(s.byID[id]), nil
}

// UpdateKey implements store.Store.
func (s *Store) UpdateKey(ctx context.Context, name string, change func(*store.Key) error) (store.Key, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	old, err := s.KeyByName(ctx, name)
	if err != nil {
		return store.Key{}, err
	}
	k, err := store.Changed(old, change)
	if err != nil {
		return store.Key{}, err
	}
	s.mu.Lock()
	if id, taken := s.byName[k.Name]; taken && id != k.ID {
		s.mu.Unlock()
		return store.Key{}, store.ErrNameTaken
	}
	oldRec := s.byID[k.ID]
	rec := &record{key: k}
	rec.lastUsed.Store(oldRec.lastUsed.Load())
	s.unindex(oldRec)
	s.index(rec)
	s.mu.Unlock()
	if err := s.persist(); err != nil {
		// Undone, under a revision of its own: requests may have read rec
		// meanwhile, and a gateway keeps a record until its revision moves,
		// so the next change must not give rec's revision to another.
		back := &record{key: oldRec.key}
		back.key.Revision = k.Revision + 1
		back.lastUsed.Store(rec.lastUsed.Load())
		s.mu.Lock()
		s.unindex(rec)
		s.index(back)
		s.mu.Unlock()
		s.epoch.Add(1)
		return store.Key{}, err
	}
	s.epoch.Add(1)
	return k, nil
}

// DeleteKey implements store.Store.
func (s *Store) DeleteKey(_ context.Context, name string) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	id, ok := s.byName[name]
	if !ok {
		s.mu.Unlock()
		return store.ErrNotFound
	}
	rec := s.byID[id]
	s.unindex(rec)
	s.mu.Unlock()
	if err := s.persist(); err != nil {
		s.mu.Lock()
		s.index(rec)
		s.mu.Unlock()
		return err
	}
	s.epoch.Add(1)
	return nil
}

// Epoch implements store.Store.
func (s *Store) Epoch(context.Context) (int64, error) { return s.epoch.Load(), nil }

// background writes out last-used times and drops idle counters.
func (s *Store) background() {
	defer s.done.Done()
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-tick.C:
			s.flushInBackground()
			s.limits.sweep(now.UnixMilli())
		}
	}
}

// flushInBackground writes out last-used times, logging a failure, which
// no caller would see (a full disk); the next tick tries again.
func (s *Store) flushInBackground() {
	if err := s.flushLastUsed(); err != nil {
		s.logger.Error("writing last-used times", zap.Error(err))
	}
}

func (s *Store) flushLastUsed() error {
	if !s.lastUsedDirty.Swap(false) {
		return nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.persist(); err != nil {
		s.lastUsedDirty.Store(true) // try again next time
		return err
	}
	return nil
}

// Close writes out last-used times and stops the background work.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.done.Wait()
		s.closeErr = s.flushLastUsed()
		// after the last write, and none after: an admin call that still
		// holds the closed store (a reload let go of it) must not rewrite
		// the file another store claims since
		s.writeMu.Lock()
		if s.lock != nil {
			s.lock.Close()
			s.lock = nil
		}
		s.writeMu.Unlock()
	})
	return s.closeErr
}
