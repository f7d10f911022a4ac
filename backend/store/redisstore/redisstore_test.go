package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/redisstore"
	"github.com/keygate/keygate/backend/store/storetest"
	"github.com/keygate/keygate/internal/redistest"
)

// TestConformance runs the shared suite on one real redis-server.
func TestConformance(t *testing.T) {
	conformance(t, redisstore.Open, redistest.Start(t).URL())
}

// On a Redis Cluster the scripts' keys must share a slot (CROSSSLOT
// otherwise): the whole suite runs on a real three-node cluster.
func TestConformanceOnCluster(t *testing.T) {
	conformance(t, redisstore.OpenCluster, redistest.StartCluster(t, 3).URL())
}

// conformance runs the shared suite on stores that open makes at url; every
// store gets a prefix of its own, which also shows that prefixes keep
// stores apart.
func conformance(t *testing.T, open func(context.Context, string, string, store.Config) (*redisstore.Store, error), url string) {
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T, cfg store.Config) store.Store {
		s, err := open(context.Background(), url, fmt.Sprintf("kgbtest%d:", n.Add(1)), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestKeysUsePrefix(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s := openOn(t, srv)
	if _, err := s.CreateLink(ctx, store.NewLink{Slug: "x1", URL: "https://example.com", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSecret(ctx, store.Secret{ID: "abc", ExpiryType: store.OneHour, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	rdb := srv.Client(t)
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if len(k) < 4 || k[:4] != redisstore.DefaultPrefix {
			t.Errorf("key %q outside the %q prefix", k, redisstore.DefaultPrefix)
		}
	}
	// The secret expires by Redis's own clock.
	ttl, err := rdb.PTTL(ctx, redisstore.DefaultPrefix+"secret:abc").Result()
	if err != nil || ttl <= 0 || ttl > time.Hour {
		t.Fatalf("secret TTL %v, %v", ttl, err)
	}
}

// TestRedisDown: an unreachable Redis is an error, never a hang or a panic,
// and the store works again once Redis is back.
func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s := openOn(t, srv)
	srv.Stop()
	if _, err := s.GetLink(ctx, "x"); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("with redis down: %v, want a connection error", err)
	}
	if _, err := s.OpenSecret(ctx, "x", nil); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("with redis down: %v, want a connection error", err)
	}
	srv.Restart()
	if _, err := s.GetLink(ctx, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after restart: %v, want ErrNotFound", err)
	}
}

func TestOpenBadURL(t *testing.T) {
	if _, err := redisstore.Open(context.Background(), "http://nope", "", store.Config{}); err == nil {
		t.Fatal("want an error for a non-redis URL")
	}
	// The error reaches the log: never with the URL's password.
	_, err := redisstore.Open(context.Background(), "redis://:s3cr%et@localhost:6379/0", "", store.Config{})
	if err == nil || strings.Contains(err.Error(), "s3cr") {
		t.Fatalf("a URL that does not parse: %v, want an error without its password", err)
	}
}

// On a cluster the prefix is a hash tag: every key the backend writes is
// under {kgb}:, on one node.
func TestClusterKeysShareOneHashTag(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	ctx := context.Background()
	s, err := redisstore.OpenCluster(ctx, cluster.URL(), "", store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.CreateLink(ctx, store.NewLink{Slug: "x1", URL: "https://example.com", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OwnerID(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSecret(ctx, store.Secret{ID: "abc", ExpiryType: store.ViewOnce, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenSecret(ctx, "abc", nil); err != nil { // leaves a tombstone
		t.Fatal(err)
	}
	if err := s.AddReport(ctx, store.Report{SecretID: "abc", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ReservePasscodeAttempt(ctx, "abd", 5, time.Minute); err != nil {
		t.Fatal(err)
	}
	var holders []string
	for _, node := range cluster.Nodes {
		keys, err := node.Client(t).Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if !strings.HasPrefix(k, "{kgb}:") {
				t.Errorf("key %q on %s outside the {kgb}: hash tag", k, node.Addr)
			}
		}
		if len(keys) > 0 {
			holders = append(holders, fmt.Sprintf("%s: %d keys", node.Addr, len(keys)))
		}
	}
	// link, link seq, owners, owner seq, tombstone, reports, attempts
	if len(holders) != 1 || !strings.HasSuffix(holders[0], ": 7 keys") {
		t.Fatalf("keys by node: %v, want all 7 on one", holders)
	}
}

// The script that consumes a view_once secret, run twice for one reader
// (its first reply lost), gives that reader the secret, not "already
// viewed"; the next reader gets ErrGone.
func TestViewOnceSurvivesARetriedScript(t *testing.T) {
	st, twice := runningScriptsTwice(t, redistest.Start(t))
	ctx := context.Background()
	now := time.Now()
	sec := store.Secret{ID: "AAAAAAAAAAAT", EncryptedBlob: "YmxvYg==", IV: "aXY=", ExpiryType: store.ViewOnce,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := st.CreateSecret(ctx, sec); err != nil {
		t.Fatal(err)
	}
	twice.Armed.Store(true)
	got, err := st.OpenSecret(ctx, sec.ID, nil)
	if err != nil || got.EncryptedBlob != sec.EncryptedBlob {
		t.Fatalf("the one reader, its script run twice: %+v, %v", got, err)
	}
	twice.Armed.Store(false)
	if _, err := st.OpenSecret(ctx, sec.ID, nil); !errors.Is(err, store.ErrGone) {
		t.Fatalf("the next reader: %v, want ErrGone", err)
	}
}

// The scripts that create and visit a link, run twice for one caller (the
// first reply lost), create it for that caller (not "slug taken") and
// count one visit, not two; another caller still finds the slug taken.
func TestLinkSurvivesARetriedScript(t *testing.T) {
	st, twice := runningScriptsTwice(t, redistest.Start(t))
	ctx := context.Background()
	twice.Armed.Store(true)
	link, err := st.CreateLink(ctx, store.NewLink{Slug: "promo", URL: "https://example.com/", OwnerID: 1, CreatedAt: time.Now()})
	if err != nil || link.ID != 1 {
		t.Fatalf("the creator, its script run twice: %+v, %v; want link 1", link, err)
	}
	if _, err := st.CreateLink(ctx, store.NewLink{Slug: "promo", URL: "https://example.org/", OwnerID: 2, CreatedAt: time.Now()}); !errors.Is(err, store.ErrSlugTaken) {
		t.Fatalf("another creator: %v, want ErrSlugTaken", err)
	}
	for want := int64(1); want <= 2; want++ {
		got, err := st.VisitLink(ctx, "promo", time.Now())
		if err != nil || got.VisitCount != want || got.URL != "https://example.com/" {
			t.Fatalf("visit %d, its script run twice: %+v, %v; want visitCount %d", want, got, err, want)
		}
	}
}

// The script that reserves a passcode attempt, run twice for one caller
// (its first reply lost), holds one reservation, not two.
func TestAttemptSurvivesARetriedScript(t *testing.T) {
	srv := redistest.Start(t)
	st, twice := runningScriptsTwice(t, srv)
	ctx := context.Background()
	const id, limit = "AAAAAAAAAAAT", 5
	twice.Armed.Store(true)
	for i := range limit {
		if token, _, err := st.ReservePasscodeAttempt(ctx, id, limit, time.Hour); err != nil || token == "" {
			t.Fatalf("reservation %d, its script run twice: %q, %v", i+1, token, err)
		}
	}
	if token, _, err := st.ReservePasscodeAttempt(ctx, id, limit, time.Hour); err != nil || token != "" {
		t.Fatalf("reservation %d: %q, %v; want it refused", limit+1, token, err)
	}
	if n, err := srv.Client(t).HLen(ctx, "kgbtwice:attempts:"+id).Result(); err != nil || n != limit {
		t.Fatalf("%d reservations held (%v), want %d", n, err, limit)
	}
}

// Reservations expire with their window, by Redis's clock; a hash found
// without an expiry (none of the store's making) gets one instead of
// locking the secret for good.
func TestAttemptsExpireInRedis(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s := openOn(t, srv)
	rdb := srv.Client(t)
	const window = 15 * time.Minute
	if _, _, err := s.ReservePasscodeAttempt(ctx, "AAAAAAAAAAA1", 5, window); err != nil {
		t.Fatal(err)
	}
	if ttl, err := rdb.PTTL(ctx, redisstore.DefaultPrefix+"attempts:AAAAAAAAAAA1").Result(); err != nil || ttl <= window-time.Minute || ttl > window {
		t.Fatalf("attempts TTL %v, %v; want about %v", ttl, err, window)
	}
	key := redisstore.DefaultPrefix + "attempts:AAAAAAAAAAA2"
	if err := rdb.HSet(ctx, key, "a", 1, "b", 1, "c", 1, "d", 1, "e", 1).Err(); err != nil {
		t.Fatal(err)
	}
	token, until, err := s.ReservePasscodeAttempt(ctx, "AAAAAAAAAAA2", 5, window)
	if err != nil || token != "" || time.Until(until) <= window-time.Minute {
		t.Fatalf("on a hash without expiry: %q until %v, %v; want refused for a window", token, until, err)
	}
	if ttl, err := rdb.PTTL(ctx, key).Result(); err != nil || ttl <= 0 || ttl > window {
		t.Fatalf("TTL %v, %v after the reservation; want the window", ttl, err)
	}
}

// openOn opens a store on srv, without a prefix, closed when the test ends.
func openOn(t *testing.T, srv *redistest.Server) *redisstore.Store {
	t.Helper()
	s, err := redisstore.Open(context.Background(), srv.URL(), "", store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// runningScriptsTwice is a store on srv (prefix kgbtwice:) whose client
// runs every script twice once the hook returned is armed, as go-redis
// sends one again when it loses its reply.
func runningScriptsTwice(t *testing.T, srv *redistest.Server) (*redisstore.Store, *redistest.ScriptsRunTwice) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	twice := new(redistest.ScriptsRunTwice)
	rdb.AddHook(twice)
	return redisstore.New(rdb, "kgbtwice:", store.Config{}), twice
}
