// Package redisstore keeps keygate's keys and rate-limit counters in Redis,
// shared by any number of gateway replicas.
//
// Layout (every hot-path script touches a single hash slot, and every other
// command one key, so that the store works on a Redis Cluster too; see
// OpenCluster):
//
//	keygate:{k:<id>}                          key record (hash)
//	keygate:{k:<id>}:<algorithm>:<limit>:<ms> the key's rate-limit counter
//	keygate:{s:<subject>}:<algorithm>:...     an anonymous subject's counter
//	keygate:h:<sha256 hex>                    key hash -> id
//	keygate:names                             name -> id, /claim/<name> -> token (hash)
//	keygate:epoch                             moved by every key change (leases)
//
// No key name ever contains a secret; records hold only its SHA-256.
//
// The two hot-path scripts are pipelined across concurrent requests under
// load (pipeline.go).
package redisstore

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/redisurl"
)

const (
	namesKey = "keygate:names"
	epochKey = "keygate:epoch" // bumped by every change to a key
	// lastUsedEvery is how stale a key's last-used time may get: the hot
	// path rewrites it at most once per interval per key.
	lastUsedEvery = 10 * time.Second
)

// SetLogger sends go-redis's own log lines (reconnect attempts and the like)
// to l at debug level instead of stderr: the gateway already logs outages
// once a second, with context.
func SetLogger(l *zap.Logger) { redis.SetLogger(zapLogging{l.Sugar()}) }

type zapLogging struct{ l *zap.SugaredLogger }

func (z zapLogging) Printf(_ context.Context, format string, v ...any) { z.l.Debugf(format, v...) }

// Store is a store.Store on Redis.
type Store struct {
	client  redis.UniversalClient
	timeout time.Duration
	// the per-request scripts go on hot, or on a Redis Cluster on shards,
	// one pipeliner per primary (concrete types: through an interface,
	// each call's arguments would escape to the heap)
	hot    *pipeliner
	shards *shardedPipeliner
}

var _ store.Store = (*Store)(nil)

// Open connects to the Redis at url (redis://, rediss:// for TLS, or
// unix://). Every client keygate opens (Open, OpenCluster, OpenSentinel)
// has timeout bound each dial, read, write and wait for a pooled
// connection, so a Redis outage never stalls a request for longer; makes
// one retry at most, as a request would rather fail fast than queue behind
// retries while Redis is away; and speaks RESP2 unless the URL asks for 3
// (?protocol=3): keygate uses no RESP3 feature, and with RESP3 go-redis
// checks every reply for push notifications, on the hot path.
func Open(url string, timeout time.Duration) (*Store, error) {
	opts, err := redisurl.Parse(url)
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", err)
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout = timeout, timeout, timeout, timeout
	opts.MaxRetries, opts.ContextTimeoutEnabled, opts.Protocol = 1, true, resp(opts.Protocol)
	return New(redis.NewClient(opts), timeout), nil
}

// OpenCluster connects to the Redis Cluster whose nodes url names (a seed
// node, more as addr options: redis://node1:6379?addr=node2:6379; the
// client finds the rest and follows the cluster's redirections, MOVED and
// ASK, apart from its one retry), with Open's settings. Every hot-path
// script touches one hash slot; each admin operation's commands touch one
// key each.
func OpenCluster(url string, timeout time.Duration) (*Store, error) {
	opts, err := redisurl.ParseCluster(url)
	if err != nil {
		return nil, fmt.Errorf("parsing redis cluster URL: %w", err)
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout = timeout, timeout, timeout, timeout
	opts.MaxRetries, opts.ContextTimeoutEnabled, opts.Protocol = 1, true, resp(opts.Protocol)
	return New(redis.NewClusterClient(opts), timeout), nil
}

// OpenSentinel connects to the primary that Redis Sentinel calls master,
// through the Sentinels url names (one, more as addr options:
// redis://sentinel1:26379?addr=sentinel2:26379; the URL's userinfo is the
// Sentinels' credentials, the primary's go in username and password
// options), with Open's settings. The client follows the Sentinels to a
// new primary after a failover.
func OpenSentinel(url, master string, timeout time.Duration) (*Store, error) {
	opts, err := redisurl.ParseFailover(url)
	if err != nil {
		return nil, fmt.Errorf("parsing redis sentinel URL: %w", err)
	}
	opts.MasterName = master
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout = timeout, timeout, timeout, timeout
	opts.MaxRetries, opts.ContextTimeoutEnabled, opts.Protocol = 1, true, resp(opts.Protocol)
	return New(redis.NewFailoverClient(opts), timeout), nil
}

// resp is the protocol version a URL asked for, or 2.
func resp(asked int) int {
	if asked == 0 {
		return 2
	}
	return asked
}

// New wraps an existing client (a cluster or failover client works too);
// timeout bounds a hot-path call, queueing included.
func New(client redis.UniversalClient, timeout time.Duration) *Store {
	s := &Store{client: client, timeout: timeout}
	if cluster, ok := client.(*redis.ClusterClient); ok {
		s.shards = newShardedPipeliner(cluster, timeout)
	} else {
		s.hot = newPipeliner(client, timeout)
	}
	return s
}

// runHot runs one of the per-request scripts.
func (s *Store) runHot(ctx context.Context, script hotScript, keys []string, args ...any) ([]any, error) {
	if s.shards != nil {
		return s.shards.run(ctx, script, keys, args...)
	}
	return s.hot.run(ctx, script, keys, args...)
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error { return s.client.Ping(ctx).Err() }

// Close closes the client and stops the pipeline.
func (s *Store) Close() error {
	// The client first: closing it closes every connection, which ends a
	// pipeline on its way to a hung Redis, so the sender stops at once
	// rather than after the timeout.
	err := s.client.Close()
	if s.shards != nil {
		s.shards.close()
	} else {
		s.hot.close()
	}
	return err
}

func recordKey(id string) string { return "keygate:{k:" + id + "}" }

func hashKey(h apikey.Hash) string { return hashKeyHex(h.String()) }

// hashKeyHex is hashKey of a hash in hex, as records hold it.
func hashKeyHex(h string) string { return "keygate:h:" + h }

// counterKey names the counter of a key id (kind 'k') or an anonymous
// subject (kind 's') under one policy and algorithm:
// "keygate:{<kind>:<name>}:<algorithm>:<limit>:<window ms>[:<zone>]"; for a key, its
// record's name is the part up to the closing brace. It is built on the
// stack and converted once, since every request on the hot path names one.
func counterKey(kind byte, name string, p store.Policy, a store.Algorithm) string {
	var buf [128]byte
	b := append(buf[:0], "keygate:{"...)
	b = append(b, kind, ':')
	b = append(b, name...)
	b = append(b, "}:"...)
	b = append(b, a...)
	b = append(b, ':')
	b = strconv.AppendInt(b, p.Limit, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, p.Window.Milliseconds(), 10)
	if p.Zone != "" { // after the numbers: no zone's name makes another's
		b = append(b, ':')
		b = append(b, p.Zone...)
	}
	return string(b)
}

// Script arguments that do not change per request, boxed once: converting
// them to interface values per call would allocate.
var (
	lastUsedEveryArg any = lastUsedEvery.Milliseconds()
	zeroArg          any = int64(0)
	oneArg           any = int64(1)
	algorithmArgs        = map[store.Algorithm]any{
		store.SlidingWindow: string(store.SlidingWindow),
		store.SlidingLog:    string(store.SlidingLog),
	}
	// leaseArgs[s] is a lease of s seconds, in ms
	leaseArgs = func() (a [store.MaxLease/time.Second + 1]any) {
		for s := range a {
			a[s] = (time.Duration(s) * time.Second).Milliseconds()
		}
		return a
	}()
)

// aheadArg is store.Ask.Ahead as the scripts take it.
func aheadArg(ahead bool) any {
	if ahead {
		return oneArg
	}
	return zeroArg
}

func algorithmArg(a store.Algorithm) any {
	if v, ok := algorithmArgs[a]; ok {
		return v
	}
	return string(a)
}

// leaseArg is how long a lease under algorithm a may last: a sliding-log
// lease the spread its caller asked for, in whole seconds (at least one,
// at most store.MaxLease; zero: MaxLease), a sliding-window lease
// MaxLease, as it ends with its window anyway.
func leaseArg(a store.Algorithm, spread time.Duration) any {
	longest := len(leaseArgs) - 1
	if a != store.SlidingLog || spread <= 0 {
		return leaseArgs[longest]
	}
	return leaseArgs[min(int((spread+time.Second-1)/time.Second), longest)]
}

// windowOffsetArg is store.WindowOffset in ms for a sliding window (zero,
// which needs no allocation, for a sliding log, which has no windows).
func windowOffsetArg(a store.Algorithm, kind byte, subject string, window time.Duration) any {
	if a == store.SlidingLog {
		return zeroArg
	}
	return store.WindowOffset(kind, subject, window).Milliseconds()
}

// CheckKey implements store.Store.
func (s *Store) CheckKey(ctx context.Context, c store.Check) (store.Verdict, error) {
	var keys []string
	if c.Policy.IsZero() {
		keys = []string{recordKey(c.KeyID)}
	} else {
		// the counter's name starts with the record's: one string for both
		ck := counterKey('k', c.KeyID, c.Policy, c.Algorithm)
		keys = []string{ck[:len("keygate:{k:}")+len(c.KeyID)], ck}
	}
	res, err := s.runHot(ctx, checkKeyScript, keys,
		c.Hash.String(), c.Revision, c.Policy.Limit, c.Policy.Window.Milliseconds(),
		algorithmArg(c.Algorithm), lastUsedEveryArg, max(c.Take, 1), leaseArg(c.Algorithm, c.Spread),
		windowOffsetArg(c.Algorithm, 'k', c.KeyID, c.Policy.Window), aheadArg(c.Ahead))
	if err != nil {
		return store.Verdict{}, err
	}
	if len(res) < 2 {
		return store.Verdict{}, fmt.Errorf("check script returned %d values", len(res))
	}
	var v store.Verdict
	v.Status = store.KeyStatus(res[0].(int64))
	if fields, _ := res[1].([]any); len(fields) > 0 {
		k, err := parseRecord(c.KeyID, fields)
		if err != nil {
			return store.Verdict{}, err
		}
		v.Fresh = &k
	}
	if len(res) == 8 {
		v.Limit = parseDecision(res[2:], c.Policy.Limit, c.Algorithm, c.Ahead)
	}
	return v, nil
}

// Limit implements store.Store.
func (s *Store) Limit(ctx context.Context, subject string, p store.Policy, a store.Algorithm, ask store.Ask) (store.Decision, error) {
	key := counterKey('s', subject, p, a)
	res, err := s.runHot(ctx, limitScript, []string{key}, p.Limit, p.Window.Milliseconds(), algorithmArg(a), max(ask.Take, 1), leaseArg(a, ask.Spread),
		windowOffsetArg(a, 's', subject, p.Window), aheadArg(ask.Ahead))
	if err != nil {
		return store.Decision{}, err
	}
	if len(res) != 6 {
		return store.Decision{}, fmt.Errorf("limit script returned %d values", len(res))
	}
	return parseDecision(res, p.Limit, a, ask.Ahead), nil
}

// parseDecision reads {allowed, remaining, reset ms, retry ms, granted,
// lease ms}, the answer of algorithm a to a lease asked ahead or not.
func parseDecision(v []any, limit int64, a store.Algorithm, ahead bool) store.Decision {
	allowed, _ := v[0].(int64)
	remaining, _ := v[1].(int64)
	reset, _ := v[2].(int64)
	retry, _ := v[3].(int64)
	granted, _ := v[4].(int64)
	lease, _ := v[5].(int64)
	d := store.Decision{
		Allowed:    allowed == 1,
		Limit:      limit,
		Remaining:  remaining,
		Reset:      time.UnixMilli(reset),
		RetryAfter: time.Duration(retry) * time.Millisecond,
		Granted:    granted,
		Lease:      time.Duration(lease) * time.Millisecond,
	}
	d.Staggered = a == store.SlidingLog && d.Leased(ahead) > 0
	return d
}

// KeyIDByHash implements store.Store.
func (s *Store) KeyIDByHash(ctx context.Context, h apikey.Hash) (string, error) {
	ctx, cancel := withTimeout(ctx, s.timeout)
	defer cancel()
	key := hashKey(h)
	id, err := s.client.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		// asked of the primary before it is taken for unknown: see
		// hashNotFoundScript
		id, err = hashNotFoundScript.Run(ctx, s.client, []string{key, "{" + key + "}:never-set"}).Text()
	}
	if errors.Is(err, redis.Nil) {
		return "", store.ErrNotFound
	}
	return id, err
}

// createRecordScript writes a new key's record unless there is one under
// its id already: a finished key's (the same key imported twice at once
// must not put back what a change made in between), or another key's.
// One still marked with a creation's token (field t: its name not yet
// claimed, nor its hash indexed), of the same hash and unchanged since
// (revision 1) is this call's (go-redis sends a script again after losing
// its reply) or one cut short, which this call finishes; one changed since
// is a working key whose finish failed. KEYS[1] the record; ARGV[1] this
// call's token; ARGV[2] the hash (hex); ARGV[3..] field/value pairs.
// Returns 1 when written, 0 when the id is taken.
var createRecordScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  local v = redis.call('HMGET', KEYS[1], 't', 'h', 'v')
  if not v[1] or v[2] ~= ARGV[2] or v[3] ~= '1' then return 0 end
end
redis.call('HSET', KEYS[1], 't', ARGV[1], unpack(ARGV, 3))
return 1
`)

// finishRecordScript unmarks a record its creation finished, if it is
// still that creation's (its token). KEYS[1] the record; ARGV[1] the token.
var finishRecordScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then redis.call('HDEL', KEYS[1], 't') end
return 1
`)

// dropRecordScript deletes a record a creation wrote, if it is still that
// creation's (its token). KEYS[1] the record; ARGV[1] the token.
var dropRecordScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// CreateKey implements store.Store. The record is written first, then its
// name claimed (names.go: an entry never names a record in the making),
// then its hash indexed, which makes the key usable. Once begun it is
// finished or undone, even if the caller leaves; one cut short (the store
// failing in the middle) is finished by creating the same key again.
func (s *Store) CreateKey(ctx context.Context, k store.Key) error {
	ctx = context.WithoutCancel(ctx) // each command is bounded by the client's timeouts
	k.Revision = 1
	token, record := strconv.FormatUint(rand.Uint64(), 36), []string{recordKey(k.ID)}
	written, err := createRecordScript.Run(ctx, s.client, record, append([]any{token, k.Hash.String()}, recordFields(k)...)...).Int()
	if err == nil && written == 0 {
		return store.ErrIDTaken // and the record is another's: left alone
	}
	if err == nil {
		var entry nameEntry
		if entry, err = s.claimName(ctx, k.Name, k.ID); err == nil {
			if err = s.client.Set(ctx, hashKey(k.Hash), k.ID, 0).Err(); err != nil {
				s.releaseName(ctx, k.Name, entry)
			}
		}
	}
	if err != nil {
		// an entry left behind by a failed release names a missing record:
		// the name is free again (names.go)
		dropRecordScript.Run(ctx, s.client, record, token)
		return err
	}
	// the key works: a record left marked (this failing) only lets the
	// same key be created over it again, and only until it is changed
	finishRecordScript.Run(ctx, s.client, record, token)
	return nil
}

// Keys implements store.Store. A name entry whose record is gone or under
// another name is skipped (names.go), so every key is listed once, whole.
func (s *Store) Keys(ctx context.Context) ([]store.Key, error) {
	entries, err := s.client.HGetAll(ctx, namesKey).Result()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for name := range entries {
		if !strings.HasPrefix(name, claimPrefix) { // a claim's token, not a name
			names = append(names, name)
		}
	}
	cmds := make([]*redis.MapStringStringCmd, len(names))
	_, err = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, name := range names {
			cmds[i] = p.HGetAll(ctx, recordKey(entries[name]))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	keys := make([]store.Key, 0, len(names))
	for i, cmd := range cmds {
		k, err := keyUnder(names[i], entries[names[i]], cmd.Val())
		switch {
		case err == nil:
			keys = append(keys, k)
		case !errors.Is(err, store.ErrNotFound):
			return nil, err
		}
	}
	store.SortKeys(keys)
	return keys, nil
}

// KeyByName implements store.Store. Only a record under the name is found
// by it (names.go); an entry whose record is gone is removed on the way.
func (s *Store) KeyByName(ctx context.Context, name string) (store.Key, error) {
	k, _, err := s.keyByName(ctx, name)
	return k, err
}

// keyByName is KeyByName, with the name's entry as read (names.go).
func (s *Store) keyByName(ctx context.Context, name string) (store.Key, nameEntry, error) {
	entry, found, err := s.readName(ctx, name)
	switch {
	case err != nil:
		return store.Key{}, nameEntry{}, err
	case !found:
		return store.Key{}, nameEntry{}, store.ErrNotFound
	}
	m, err := s.client.HGetAll(ctx, recordKey(entry.id)).Result()
	if err != nil {
		return store.Key{}, nameEntry{}, err
	}
	if len(m) == 0 {
		s.releaseName(context.WithoutCancel(ctx), name, entry) // mended if it can be; else the next claim does
	}
	k, err := keyUnder(name, entry.id, m)
	return k, entry, err
}

// keyUnder is the key that name's entry (id) names, its record's fields m:
// store.ErrNotFound when the record is gone (m empty) or under another name
// (names.go).
func keyUnder(name, id string, m map[string]string) (store.Key, error) {
	if len(m) == 0 {
		return store.Key{}, store.ErrNotFound
	}
	k, err := recordFromMap(id, m)
	if err == nil && k.Name != name {
		return store.Key{}, store.ErrNotFound
	}
	return k, err
}

// UpdateKey implements store.Store. The record is written only if its
// revision is still the one read (else the change is retried on the fresh
// record). A new name is claimed and a new hash indexed before the record
// changes, and the old ones released after: until the record holds the new
// ones they name nothing (names.go; the hot path checks a hash against the
// record's), and once it does, the old ones name nothing. So a change cut
// off at any point leaves the key usable, under its old name and secret or
// its new ones. Once begun it is finished or undone, even if the caller
// leaves.
func (s *Store) UpdateKey(ctx context.Context, name string, change func(*store.Key) error) (store.Key, error) {
	ctx = context.WithoutCancel(ctx) // each command is bounded by the client's timeouts
	for range 10 {
		old, oldEntry, err := s.keyByName(ctx, name)
		if err != nil {
			return store.Key{}, err
		}
		k, err := store.Changed(old, change)
		if err != nil {
			return store.Key{}, err
		}
		renamed, rotated := k.Name != old.Name, k.Hash != old.Hash
		var entry nameEntry // the new name's, claimed by this change
		undo := func() { s.releaseClaims(ctx, k, entry, rotated) }
		if renamed {
			if entry, err = s.claimName(ctx, k.Name, k.ID); err != nil {
				return store.Key{}, err
			}
		}
		if rotated {
			if err := s.client.Set(ctx, hashKey(k.Hash), k.ID, 0).Err(); err != nil {
				undo()
				return store.Key{}, err
			}
		}
		args := append([]any{old.Revision}, recordFields(k)...)
		res, err := updateScript.Run(ctx, s.client, []string{recordKey(k.ID)}, args...).Int()
		if err != nil || res == 0 {
			// A lost reply, or a revision moved on: go-redis sends a
			// command again when its reply is lost, and a second run of the
			// script finds the revision moved by the first. So the record
			// is read back: it may hold this change.
			held, herr := s.holds(ctx, k, renamed || rotated)
			switch {
			case herr != nil:
				// not known: what was claimed is left, naming nothing unless
				// the record holds it; gateways are told in case it does
				s.bumpEpoch(ctx)
				return k, fmt.Errorf("%w: %w", store.ErrUnconfirmed, cmp.Or(err, herr))
			case held:
				res = 1
			case err != nil:
				undo()
				return store.Key{}, err
			}
		}
		switch res {
		case -1:
			undo()
			return store.Key{}, store.ErrNotFound
		case 0:
			undo()
			continue // someone else changed it first: apply the change again
		}
		// what is left behind here names nothing; an error is no failure
		if renamed {
			s.releaseName(ctx, old.Name, oldEntry)
		}
		if rotated {
			s.client.Del(ctx, hashKey(old.Hash))
		}
		return k, s.bumpEpoch(ctx)
	}
	return store.Key{}, store.ErrContended
}

// holds reports whether k's record holds k's change: an update whose reply
// was lost was made. The record holds k's revision, name and hash; or, for
// a change that brought a new name or secret (marked), a later revision
// still holding them: another change landed on top of this one.
func (s *Store) holds(ctx context.Context, k store.Key, marked bool) (bool, error) {
	v, err := s.client.HMGet(ctx, recordKey(k.ID), "v", "n", "h").Result()
	if err != nil {
		return false, err
	}
	if v[1] != any(k.Name) || v[2] != any(k.Hash.String()) {
		return false, nil
	}
	rev, _ := v[0].(string)
	n, err := strconv.ParseInt(rev, 10, 64)
	return err == nil && (n == k.Revision || marked && n > k.Revision), nil
}

// releaseClaims lets go of the name entry and the hash index that a change
// to k claimed (entry, if it renamed k; rotated) and did not make: unless
// k's record holds them, as it does when the change was made after all and
// another landed on top (releasing them then would leave the key unnamed,
// or its only secret unindexed). If the record cannot be read they are left: they name
// nothing while it does not hold them (names.go).
func (s *Store) releaseClaims(ctx context.Context, k store.Key, entry nameEntry, rotated bool) {
	v, err := s.client.HMGet(ctx, recordKey(k.ID), "n", "h").Result()
	if err != nil {
		return
	}
	if entry.id != "" && v[0] != any(k.Name) {
		s.releaseName(ctx, k.Name, entry)
	}
	if rotated && v[1] != any(k.Hash.String()) {
		s.client.Del(ctx, hashKey(k.Hash))
	}
}

// deleteRecordScript deletes a key's record if it is still under the name
// it was found by: a rename that came in between makes the name another
// key's or no one's. KEYS[1] the record; ARGV[1] the name. Returns the
// record's hash (hex) when deleted, 0 when the record is under another
// name, nil when there is none.
var deleteRecordScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'n', 'h')
if not v[1] then return false end
if v[1] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return v[2]
`)

// DeleteKey implements store.Store. The record goes first, if it is still
// under the name: from then on every replica rejects the key, and its name
// and hash name nothing (names.go), so their removal after may fail
// without harm. Once begun it is finished, even if the caller leaves.
func (s *Store) DeleteKey(ctx context.Context, name string) error {
	ctx = context.WithoutCancel(ctx) // each command is bounded by the client's timeouts
	for range 10 {
		k, entry, err := s.keyByName(ctx, name)
		if err != nil {
			return err
		}
		hashes := []string{hashKey(k.Hash)}
		res, err := deleteRecordScript.Run(ctx, s.client, []string{recordKey(k.ID)}, name).Result()
		switch {
		case errors.Is(err, redis.Nil):
			// gone already: deleted by this call (go-redis sent the script
			// again after losing its reply) or by another
		case err != nil:
			s.bumpEpoch(ctx) // the record may be gone: gateways are told in case
			return fmt.Errorf("%w: %w", store.ErrUnconfirmed, err)
		case res == int64(0):
			continue // renamed meanwhile: whose is the name now?
		default:
			// the hash the record held, a rotation's since it was read
			if h, _ := res.(string); len(h) == 2*len(k.Hash) && hashKeyHex(h) != hashes[0] {
				hashes = append(hashes, hashKeyHex(h))
			}
		}
		for _, h := range hashes { // one by one: they live in different cluster slots
			s.client.Del(ctx, h)
		}
		s.releaseName(ctx, name, entry)
		return s.bumpEpoch(ctx)
	}
	return store.ErrContended
}

// The epoch never comes back to a value a lease was granted under while
// keys changed since: a Redis that lost it (FLUSHALL, a restart without
// persistence) starts it afresh at a random value, not at 0, and each
// change moves it by a random step, not by 1, so that a failover to a
// replica that missed the last bumps, followed by as many changes, does
// not land on the value they had reached (a lease granted under it would
// be used again, for a key changed since).
const (
	epochSeedMax = 1 << 62 // room for 2^30 steps of at most epochStepMax
	epochStepMax = 1 << 32
)

// Epoch implements store.Store.
func (s *Store) Epoch(ctx context.Context) (int64, error) {
	return epochScript.Run(ctx, s.client, []string{epochKey}, 1+rand.Int64N(epochSeedMax)).Int64()
}

// bumpEpoch tells every gateway that a key changed. It runs after the
// change (a gateway that re-reads the record on seeing the new epoch must
// find it changed) and on its own key, not inside the record's script:
// the two live in different cluster slots.
func (s *Store) bumpEpoch(ctx context.Context) error {
	if err := s.client.IncrBy(context.WithoutCancel(ctx), epochKey, 1+rand.Int64N(epochStepMax)).Err(); err != nil {
		return fmt.Errorf("%w: %w", store.ErrUnannounced, err)
	}
	return nil
}

// recordFields renders a record as HSET arguments.
func recordFields(k store.Key) []any {
	enabled := "0"
	if k.Enabled {
		enabled = "1"
	}
	return []any{
		"i", k.ID,
		"n", k.Name,
		"h", k.Hash.String(),
		"p", k.Prefix,
		"r", strings.Join(k.Roles, ","),
		"o", k.Owner,
		"e", enabled,
		"x", unixMilli(k.ExpiresAt),
		"l", k.RateLimit.Limit,
		"w", k.RateLimit.Window.Milliseconds(),
		"c", unixMilli(k.CreatedAt),
		"u", unixMilli(k.LastUsedAt),
		"v", k.Revision,
	}
}

func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func timeMilli(s string) time.Time {
	ms, _ := strconv.ParseInt(s, 10, 64)
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// parseRecord reads the flat field/value list HGETALL returns in a script.
func parseRecord(id string, flat []any) (store.Key, error) {
	m := make(map[string]string, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		f, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		m[f] = v
	}
	return recordFromMap(id, m)
}

func recordFromMap(id string, m map[string]string) (store.Key, error) {
	var k store.Key
	raw, err := hex.DecodeString(m["h"])
	if err != nil || len(raw) != len(k.Hash) {
		return store.Key{}, fmt.Errorf("key record %s has a malformed hash", id)
	}
	copy(k.Hash[:], raw)
	k.ID = id
	k.Name = m["n"]
	k.Prefix = m["p"]
	if r := m["r"]; r != "" {
		k.Roles = strings.Split(r, ",")
	}
	k.Owner = m["o"]
	k.Enabled = m["e"] == "1"
	k.ExpiresAt = timeMilli(m["x"])
	k.RateLimit.Limit, _ = strconv.ParseInt(m["l"], 10, 64)
	w, _ := strconv.ParseInt(m["w"], 10, 64)
	k.RateLimit.Window = time.Duration(w) * time.Millisecond
	k.CreatedAt = timeMilli(m["c"])
	k.LastUsedAt = timeMilli(m["u"])
	k.Revision, _ = strconv.ParseInt(m["v"], 10, 64)
	return k, nil
}
