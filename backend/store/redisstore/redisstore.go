// Package redisstore keeps the backend's links, secrets and reports in Redis,
// under a key prefix of their own, so that several backend replicas share
// them. Everything that must be atomic is one Lua script or one command;
// secret expiry is Redis's own key expiry (PXAT), so an expired secret cannot
// be read even if nothing ever cleans up.
//
// Keys (P is the prefix, "kgb:" by default):
//
//	P link:<slug>    hash   id url ownerId createdAt visitCount lastVisitedAt (ms),
//	                        ct vt: the tokens of its creation and last visit
//	P seq:link       string last link id
//	P owners         hash   owner key -> owner id
//	P seq:owner      string last owner id
//	P secret:<id>    string JSON of store.Secret, expires at its ExpiresAt
//	P gone:<id>      string tombstone of a read view_once secret, TTL-bound
//	P attempts:<id>  hash   passcode attempts held: token -> 1, expires with its window
//	P reports        list   JSON of store.Report, oldest first
//
// On a Redis Cluster (OpenCluster) the prefix is a hash tag, {kgb}:, so
// that the scripts, which touch several keys, find them in one slot: the
// backend's data lives on one node (and its replicas), while the gateway's
// keys spread over the cluster.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/internal/redisurl"
)

// DefaultPrefix keeps the backend's keys apart from the gateway's.
const DefaultPrefix = "kgb:"

// Store implements store.Store on Redis.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	cfg    store.Config
	owned  bool // Close closes rdb
}

var (
	_ store.Store        = (*Store)(nil)
	_ store.Unavailabler = (*Store)(nil)
)

// Open connects to the Redis at url (redis://[user:pass@]host:port/db or
// rediss:// for TLS), with timeouts on every network call, and checks that it
// answers. prefix "" means DefaultPrefix.
func Open(ctx context.Context, url, prefix string, cfg store.Config) (*Store, error) {
	opts, err := redisurl.Parse(url)
	if err != nil {
		return nil, fmt.Errorf("redisstore: parsing URL: %w", err)
	}
	bound(&opts.DialTimeout, &opts.ReadTimeout, &opts.WriteTimeout)
	opts.ContextTimeoutEnabled = true // a call's budget cuts its reads short too (callBudget)
	return open(ctx, redis.NewClient(opts), prefix, cfg)
}

// OpenCluster connects to the Redis Cluster whose nodes url names (one,
// more as addr options: redis://node1:6379?addr=node2:6379), with Open's
// timeouts. The prefix becomes a hash tag (kgb: is {kgb}:), so that every
// key is in one slot.
func OpenCluster(ctx context.Context, url, prefix string, cfg store.Config) (*Store, error) {
	opts, err := redisurl.ParseCluster(url)
	if err != nil {
		return nil, fmt.Errorf("redisstore: parsing cluster URL: %w", err)
	}
	bound(&opts.DialTimeout, &opts.ReadTimeout, &opts.WriteTimeout)
	opts.ContextTimeoutEnabled = true // a call's budget cuts its reads short too (callBudget)
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return open(ctx, redis.NewClusterClient(opts), hashTagged(prefix), cfg)
}

// OpenSentinel connects to the primary that Redis Sentinel calls master,
// through the Sentinels url names (one, more as addr options; the URL's
// userinfo is the Sentinels' credentials, the primary's go in username
// and password options), with Open's timeouts; after a failover the client
// follows the Sentinels to the new primary.
func OpenSentinel(ctx context.Context, url, master, prefix string, cfg store.Config) (*Store, error) {
	opts, err := redisurl.ParseFailover(url)
	if err != nil {
		return nil, fmt.Errorf("redisstore: parsing sentinel URL: %w", err)
	}
	opts.MasterName = master
	bound(&opts.DialTimeout, &opts.ReadTimeout, &opts.WriteTimeout)
	opts.ContextTimeoutEnabled = true // a call's budget cuts its reads short too (callBudget)
	return open(ctx, redis.NewFailoverClient(opts), prefix, cfg)
}

// bound sets the timeouts a URL left unset, so that a stuck Redis turns
// into errors, not into requests that hang forever.
func bound(dial, read, write *time.Duration) {
	if *dial <= 0 {
		*dial = 5 * time.Second
	}
	if *read <= 0 {
		*read = 3 * time.Second
	}
	if *write <= 0 {
		*write = 3 * time.Second
	}
}

// hashTagged makes a prefix a hash tag: "kgb:" becomes "{kgb}:". One
// holding a tag already is kept.
func hashTagged(prefix string) string {
	if strings.Contains(prefix, "{") {
		return prefix
	}
	return "{" + strings.TrimSuffix(prefix, ":") + "}:"
}

// open wraps a client it owns and checks that Redis answers.
func open(ctx context.Context, rdb redis.UniversalClient, prefix string, cfg store.Config) (*Store, error) {
	s := New(rdb, prefix, cfg)
	s.owned = true
	if err := s.Ping(ctx); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("redisstore: %w", err)
	}
	return s, nil
}

// New wraps an existing client (a cluster or failover client works too,
// a cluster's with a hash-tagged prefix); Close will not close it. It adds
// a hook to the client that bounds each call without a deadline by one
// attempt's timeouts (callBudget).
func New(rdb redis.UniversalClient, prefix string, cfg store.Config) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	rdb.AddHook(budgetOf(rdb))
	return &Store{rdb: rdb, prefix: prefix, cfg: cfg.WithDefaults()}
}

// Unavailable implements store.Unavailabler: no connection free within the
// timeout, or a reply that says Redis does not serve for now (loading its
// data, a replica read-only or cut off from its primary after a failover,
// a cluster down or a slot moving, a script running too long, no room for
// another client).
func (s *Store) Unavailable(err error) bool {
	return errors.Is(err, redis.ErrPoolTimeout) || redis.IsLoadingError(err) || redis.IsReadOnlyError(err) ||
		redis.IsMasterDownError(err) || redis.IsClusterDownError(err) || redis.IsTryAgainError(err) ||
		redis.HasErrorPrefix(err, "BUSY") || redis.IsMaxClientsError(err) || scriptWriteOnReplica(err)
}

// scriptWriteOnReplica is a script's write refused by a replica as Redis 6
// reports it: "ERR Error running script … -READONLY You can't write …"
// (Redis 7 keeps READONLY first, which IsReadOnlyError knows).
func scriptWriteOnReplica(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.Contains(rerr.Error(), "READONLY You can't write against a read only replica")
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error { return s.rdb.Ping(ctx).Err() }

// Close implements store.Store.
func (s *Store) Close() error {
	if s.owned {
		return s.rdb.Close()
	}
	return nil
}

func (s *Store) key(parts ...string) string {
	k := s.prefix
	for _, p := range parts {
		k += p
	}
	return k
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// ---- links

// createLink allocates an id only when the slug is free, so that losers of a
// race leave no gaps in the sequence. The link holds its creator's token
// (ARGV[4], random): go-redis sends a script again when it loses the reply,
// and the second run, finding the link, must answer its creator with the
// link it made, not "slug taken".
var createLink = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'ct') == ARGV[4] then
    return tonumber(redis.call('HGET', KEYS[1], 'id'))
  end
  return 0
end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'id', id, 'url', ARGV[1], 'ownerId', ARGV[2],
  'createdAt', ARGV[3], 'visitCount', 0, 'lastVisitedAt', 0, 'ct', ARGV[4])
return id
`)

// CreateLink implements store.LinkStore.
func (s *Store) CreateLink(ctx context.Context, nl store.NewLink) (store.Link, error) {
	created := nl.CreatedAt // kept in ms, truncated
	id, err := createLink.Run(ctx, s.rdb,
		[]string{s.key("link:", nl.Slug), s.key("seq:link")},
		nl.URL, nl.OwnerID, ms(created), rand.Text()).Int64()
	if err != nil {
		return store.Link{}, fmt.Errorf("redisstore: creating link: %w", err)
	}
	if id == 0 {
		return store.Link{}, store.ErrSlugTaken
	}
	return store.Link{ID: id, Slug: nl.Slug, URL: nl.URL, OwnerID: nl.OwnerID, CreatedAt: fromMS(ms(created))}, nil
}

// GetLink implements store.LinkStore.
func (s *Store) GetLink(ctx context.Context, slug string) (store.Link, error) {
	m, err := s.rdb.HGetAll(ctx, s.key("link:", slug)).Result()
	if err != nil {
		return store.Link{}, fmt.Errorf("redisstore: reading link: %w", err)
	}
	return linkFromHash(slug, m)
}

// visitLink counts the visit only if the link exists (HINCRBY alone would
// conjure up a half-empty hash for unknown slugs). The link keeps its last
// visit's token (ARGV[2], random), so a second run of the same visit's
// script (go-redis sends it again when it loses the reply) does not count
// it again; unless another visit came in between, which this does not
// tell apart (a count one too high, against keeping a token per visit).
var visitLink = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('HGET', KEYS[1], 'vt') ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[1], 'visitCount', 1)
  redis.call('HSET', KEYS[1], 'lastVisitedAt', ARGV[1], 'vt', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
`)

// VisitLink implements store.LinkStore.
func (s *Store) VisitLink(ctx context.Context, slug string, at time.Time) (store.Link, error) {
	vals, err := visitLink.Run(ctx, s.rdb, []string{s.key("link:", slug)}, ms(at), rand.Text()).StringSlice()
	if err != nil {
		return store.Link{}, fmt.Errorf("redisstore: visiting link: %w", err)
	}
	m := make(map[string]string, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		m[vals[i]] = vals[i+1]
	}
	return linkFromHash(slug, m)
}

func linkFromHash(slug string, m map[string]string) (store.Link, error) {
	if len(m) == 0 {
		return store.Link{}, store.ErrNotFound
	}
	var ints [5]int64
	for i, f := range []string{"id", "ownerId", "createdAt", "visitCount", "lastVisitedAt"} {
		v, err := strconv.ParseInt(m[f], 10, 64)
		if err != nil {
			return store.Link{}, fmt.Errorf("redisstore: link %q: bad field %s: %w", slug, f, err)
		}
		ints[i] = v
	}
	return store.Link{
		ID:            ints[0],
		Slug:          slug,
		URL:           m["url"],
		OwnerID:       ints[1],
		CreatedAt:     fromMS(ints[2]),
		VisitCount:    ints[3],
		LastVisitedAt: fromMS(ints[4]),
	}, nil
}

var ownerID = redis.NewScript(`
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then return tonumber(id) end
id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return id
`)

// OwnerID implements store.LinkStore.
func (s *Store) OwnerID(ctx context.Context, key string) (int64, error) {
	id, err := ownerID.Run(ctx, s.rdb, []string{s.key("owners"), s.key("seq:owner")}, key).Int64()
	if err != nil {
		return 0, fmt.Errorf("redisstore: owner id: %w", err)
	}
	return id, nil
}

// ---- secrets

// createSecret refuses ids that are live or tombstoned, and lets Redis expire
// the secret at its absolute deadline.
var createSecret = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return 1
`)

// CreateSecret implements store.SecretStore.
func (s *Store) CreateSecret(ctx context.Context, sec store.Secret) error {
	body, err := json.Marshal(sec)
	if err != nil {
		return fmt.Errorf("redisstore: encoding secret: %w", err)
	}
	ok, err := createSecret.Run(ctx, s.rdb,
		[]string{s.key("secret:", sec.ID), s.key("gone:", sec.ID)},
		body, ms(sec.ExpiresAt)).Int()
	if err != nil {
		return fmt.Errorf("redisstore: creating secret: %w", err)
	}
	if ok == 0 {
		return store.ErrIDTaken
	}
	return nil
}

// consumeSecret deletes a view_once secret and leaves its tombstone in one
// step: the caller whose script found the key is the one and only reader.
// The tombstone holds that caller's token (ARGV[2], random), so that the
// script run again for the same caller (go-redis sends a command again
// when it loses its reply) knows its own consumption. It answers the
// secret, or 2 when the tombstone is this caller's, 1 when it is another's,
// or 0 when there is neither.
var consumeSecret = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  local t = redis.call('GET', KEYS[2])
  if t == ARGV[2] then return 2 end
  if t then return 1 end
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
return v
`)

// OpenSecret implements store.SecretStore. The passcode check runs in Go
// (authorize compares in constant time) between a plain GET and the consuming
// script; that is safe because secrets are immutable and the script only
// succeeds for one caller.
func (s *Store) OpenSecret(ctx context.Context, id string, authorize func(store.Secret) error) (store.Secret, error) {
	secretKey, goneKey := s.key("secret:", id), s.key("gone:", id)
	raw, err := s.rdb.Get(ctx, secretKey).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		if raw, err = s.missing(ctx, secretKey, goneKey); err != nil {
			return store.Secret{}, err
		}
	case err != nil:
		return store.Secret{}, fmt.Errorf("redisstore: reading secret: %w", err)
	}
	sec, err := decodeSecret(raw)
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
	token := rand.Text()
	res, err := consumeSecret.Run(ctx, s.rdb, []string{secretKey, goneKey}, s.cfg.TombstoneTTL.Milliseconds(), token).Result()
	if err != nil {
		return store.Secret{}, fmt.Errorf("redisstore: consuming secret: %w", err)
	}
	switch v := res.(type) {
	case string:
		return decodeSecret([]byte(v))
	case int64:
		switch v {
		case 2: // consumed by this call, whose first reply was lost: the secret is its
			return sec, nil
		case 1:
			return store.Secret{}, store.ErrGone
		}
		return store.Secret{}, store.ErrNotFound // expired between GET and script
	default:
		return store.Secret{}, fmt.Errorf("redisstore: consuming secret: unexpected reply %T", res)
	}
}

// secretMissing reads again, on the primary, a secret a plain GET did not
// find: it answers the secret if it is there, else 1 for its tombstone or
// 0 for neither. Its first command writes (deletes a key never set, a
// no-op), so a replica refuses the script with READONLY (a 503 worth
// retrying) instead of answering from its copy: after a failover the
// client still holds connections to the demoted primary until it hears of
// the new one, and a secret created since is not there yet.
var secretMissing = redis.NewScript(`
redis.call('DEL', KEYS[3])
local v = redis.call('GET', KEYS[1])
if v then return v end
return redis.call('EXISTS', KEYS[2])
`)

// missing tells a secret that a plain read did not find from one that is
// not there (store.ErrNotFound) or gone (store.ErrGone), on the primary;
// see secretMissing.
func (s *Store) missing(ctx context.Context, secretKey, goneKey string) ([]byte, error) {
	res, err := secretMissing.Run(ctx, s.rdb, []string{secretKey, goneKey, s.key("never-set")}).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: reading a secret not found: %w", err)
	}
	switch v := res.(type) {
	case string:
		return []byte(v), nil
	case int64:
		if v == 1 {
			return nil, store.ErrGone
		}
		return nil, store.ErrNotFound
	}
	return nil, fmt.Errorf("redisstore: reading a secret not found: unexpected reply %T", res)
}

func decodeSecret(raw []byte) (store.Secret, error) {
	var sec store.Secret
	if err := json.Unmarshal(raw, &sec); err != nil {
		return store.Secret{}, fmt.Errorf("redisstore: decoding secret: %w", err)
	}
	return sec, nil
}

// ---- reports

// AddReport implements store.ReportStore.
func (s *Store) AddReport(ctx context.Context, r store.Report) error {
	body, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("redisstore: encoding report: %w", err)
	}
	// appended and trimmed to the newest MaxReports in one transaction
	key := s.key("reports")
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.RPush(ctx, key, body)
		p.LTrim(ctx, key, -int64(s.cfg.MaxReports), -1)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisstore: storing report: %w", err)
	}
	return nil
}

// Reports implements store.ReportStore.
func (s *Store) Reports(ctx context.Context, limit int) ([]store.Report, error) {
	if limit <= 0 {
		return nil, nil
	}
	vals, err := s.rdb.LRange(ctx, s.key("reports"), -int64(limit), -1).Result()
	if err != nil {
		return nil, fmt.Errorf("redisstore: reading reports: %w", err)
	}
	out := make([]store.Report, 0, len(vals))
	for _, v := range vals {
		var r store.Report
		if err := json.Unmarshal([]byte(v), &r); err != nil {
			return nil, fmt.Errorf("redisstore: decoding report: %w", err)
		}
		out = append(out, r)
	}
	return out, nil
}
