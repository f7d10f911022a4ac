package keygate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/caddymodule/store/localstore"
	"github.com/keygate/keygate/caddymodule/store/redisstore"
	"github.com/keygate/keygate/internal/redisurl"
)

func init() {
	caddy.RegisterModule(App{})
}

// stores holds the open stores, keyed by where they point, so that the
// connection pool and the key cache survive config reloads: a reload
// provisions the new App (one more user) before cleaning up the old one.
var stores = caddy.NewUsagePool()

// App is the keygate app. It owns the key store that every keygate handler
// and the admin API share. Configure it with the `keygate` global option; a
// handler used without it gets an App with the defaults.
type App struct {
	// Redis is the go-redis URL of the shared store, e.g.
	// redis://127.0.0.1:6379/0 (rediss:// for TLS, unix:// for a socket).
	// Use it whenever more than one gateway replica serves the same keys.
	// Default: empty, an embedded store in Caddy's data directory
	// (keygate/keys.json) with rate limits kept in this process.
	Redis string `json:"redis,omitempty"`

	// RedisCluster says that Redis is a Redis Cluster: the URL then names
	// one node, and more with addr options
	// (redis://node1:6379?addr=node2:6379&addr=node3:6379); the gateway
	// finds the rest of the cluster from them and follows its
	// redirections. Every script keygate runs touches one hash slot.
	// Default: false, a single Redis server (or a proxy in front of one).
	RedisCluster bool `json:"redis_cluster,omitempty"`

	// RedisSentinel is the name under which Redis Sentinel monitors the
	// primary (its "master name"), and says that the URL names Sentinels:
	// one, more with addr options
	// (redis://sentinel1:26379?addr=sentinel2:26379); the URL's userinfo is
	// the Sentinels' credentials, the primary's go in username and password
	// options. The gateway asks the Sentinels for the primary and follows
	// it to a new one after a failover. Default: empty, no Sentinel.
	RedisSentinel string `json:"redis_sentinel,omitempty"`

	// OnStoreError decides what happens while the store is unreachable.
	// "closed" (default): every request that needs the store (keyed or
	// anonymous) gets 503. "open": a key that validated within
	// FailOpenGrace passes without rate limiting, unless its record then
	// said disabled or it has expired since (401); anything else still
	// gets 503.
	OnStoreError string `json:"on_store_error,omitempty"`

	// Timeout bounds every store call (dial, read, write), so an outage
	// never stalls a request for longer. At least 1ms (in JSON a bare
	// number is nanoseconds: write "500ms"). Default: 500ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// FailOpenGrace is how recently a key must have validated to pass while
	// the store is down with on_store_error open. Default: 5m.
	FailOpenGrace caddy.Duration `json:"fail_open_grace,omitempty"`

	poolKey string
	shared  *sharedStore
	metrics *metrics
	logger  *zap.Logger
}

// Failure modes for OnStoreError.
const (
	storeErrorClosed = "closed"
	storeErrorOpen   = "open"
)

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "keygate",
		New: func() caddy.Module { return new(App) },
	}
}

// sharedStore is what the usage pool keeps: the store and the cache of
// keys seen on it.
type sharedStore struct {
	store.Store
	keys   *keyCache
	epochs epochWatch // polled only once a handler uses leases
	leases leaseTables
}

// Destruct closes the store when the last config using it is gone: the
// store first, which ends the calls on their way to it, so that the reload
// does not wait for a hung store (TestReloadDoesNotWaitForAHungStore).
func (s *sharedStore) Destruct() error {
	err := s.Close()
	s.epochs.close()
	return err
}

// minStoreTimeout is the shortest store timeout a config may set.
const minStoreTimeout = time.Millisecond

// Provision opens (or reuses) the store.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.OnStoreError == "" {
		a.OnStoreError = storeErrorClosed
	}
	if a.Timeout <= 0 {
		a.Timeout = caddy.Duration(500 * time.Millisecond)
	}
	if time.Duration(a.Timeout) < minStoreTimeout {
		// every store call would time out: all traffic 503
		return fmt.Errorf("timeout %v is below %v (in JSON a bare number is nanoseconds: write \"500ms\")", time.Duration(a.Timeout), minStoreTimeout)
	}
	if a.FailOpenGrace <= 0 {
		a.FailOpenGrace = caddy.Duration(5 * time.Minute)
	}
	a.metrics = newMetrics(ctx.GetMetricsRegistry(), a.Redis != "")

	var open func() (store.Store, error)
	if a.Redis != "" {
		a.poolKey = fmt.Sprintf("redis|%t|%s|%s|%s", a.RedisCluster, a.RedisSentinel, a.Redis, time.Duration(a.Timeout))
		open = func() (store.Store, error) {
			redisstore.SetLogger(a.logger.Named("redis"))
			switch {
			case a.RedisCluster:
				return redisstore.OpenCluster(a.Redis, time.Duration(a.Timeout))
			case a.RedisSentinel != "":
				return redisstore.OpenSentinel(a.Redis, a.RedisSentinel, time.Duration(a.Timeout))
			}
			s, err := redisstore.Open(a.Redis, time.Duration(a.Timeout))
			if err != nil {
				return nil, redisurl.MoreServers(a.Redis, err, "redis_cluster", "redis_sentinel <master name>")
			}
			return s, nil
		}
	} else {
		path := embeddedKeyFile()
		a.poolKey = "file|" + path
		open = func() (store.Store, error) { return localstore.Open(path, a.logger.Named("store")) }
	}
	val, loaded, err := stores.LoadOrNew(a.poolKey, func() (caddy.Destructor, error) {
		s, err := open()
		if err != nil {
			return nil, err
		}
		return &sharedStore{Store: s, keys: newKeyCache()}, nil
	})
	if err != nil {
		return fmt.Errorf("opening key store: %v", err)
	}
	a.shared = val.(*sharedStore)
	if !loaded {
		a.logger.Info("key store opened", zap.String("store", a.storeName()))
		if a.Redis != "" {
			a.warnOfEmbeddedKeys(embeddedKeyFile())
		}
	}
	return nil
}

// embeddedKeyFile is where the embedded store keeps its keys.
func embeddedKeyFile() string { return filepath.Join(caddy.AppDataDir(), "keygate", "keys.json") }

// warnOfEmbeddedKeys warns, as a gateway moves to Redis, of keys the
// embedded store holds, which Redis does not serve until they are imported:
// otherwise every client would get 401 with nothing in the log to say why.
func (a *App) warnOfEmbeddedKeys(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var f store.Export
	if json.Unmarshal(data, &f) != nil || len(f.Keys) == 0 {
		return
	}
	a.logger.Warn("the embedded key store holds keys that Redis does not serve until they are imported "+
		"(keygate api-key import FILE; keys already in Redis are skipped), then move the file away",
		zap.String("file", path), zap.Int("keys", len(f.Keys)))
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if a.OnStoreError != storeErrorClosed && a.OnStoreError != storeErrorOpen {
		return fmt.Errorf("on_store_error must be %q or %q, not %q", storeErrorClosed, storeErrorOpen, a.OnStoreError)
	}
	if a.RedisCluster && a.Redis == "" {
		return errors.New("redis_cluster needs the URL of a cluster node in redis")
	}
	if a.RedisSentinel != "" && a.Redis == "" {
		return errors.New("redis_sentinel needs the URL of a Sentinel in redis")
	}
	if a.RedisCluster && a.RedisSentinel != "" {
		return errors.New("redis_cluster and redis_sentinel exclude each other")
	}
	return nil
}

// Start implements caddy.App. The embedded store is claimed here, not
// when provisioned: a config that is only validated (keygate validate,
// beside the gateway serving the store) provisions it too, and must
// neither fail for the lock nor write.
func (a *App) Start() error {
	if c, ok := a.shared.Store.(interface{ Claim() error }); ok {
		return c.Claim()
	}
	return nil
}

// Stop implements caddy.App.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's use of the store.
func (a *App) Cleanup() error {
	if a.poolKey == "" {
		return nil
	}
	_, err := stores.Delete(a.poolKey)
	return err
}

// storeName describes the store for logs without its credentials.
func (a *App) storeName() string {
	switch {
	case a.Redis == "":
		return "embedded"
	case a.RedisCluster:
		return "redis cluster"
	case a.RedisSentinel != "":
		return "redis sentinel"
	}
	return "redis"
}

// errAppNotRunning is returned by the admin API when no config uses keygate.
var errAppNotRunning = errors.New("keygate is not configured: add the keygate global option or a keygate handler")

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
