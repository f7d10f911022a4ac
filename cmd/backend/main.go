// Command backend runs the keygate backend: uploads, short links and
// one-time secrets, behind the keygate gateway.
//
// Every flag has an environment variable fallback (the flag wins):
//
//	-listen             BACKEND_LISTEN           default 127.0.0.1:8081
//	-data               BACKEND_DATA_DIR         default ./data
//	-redis              BACKEND_REDIS_URL        empty: embedded store <data>/backend.db
//	-redis-cluster      BACKEND_REDIS_CLUSTER    the URL names Redis Cluster nodes (true/false)
//	-redis-sentinel     BACKEND_REDIS_SENTINEL   the URL names Sentinels monitoring this master
//	-max-upload         BACKEND_MAX_UPLOAD       default 20MiB
//	-max-secret         BACKEND_MAX_SECRET       default 1MiB
//	-upstream-secret    KEYGATE_UPSTREAM_SECRET  required (prefer the env var: flags show in ps)
//	-insecure-no-secret                          run without the secret (local experiments only)
//
// `backend reports [-n 100] [-data DIR] [-redis URL [-redis-cluster |
// -redis-sentinel MASTER]]` prints the newest abuse reports of SecLink
// secrets, one JSON object a line (reports.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keygate/keygate/backend"
	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/boltstore"
	"github.com/keygate/keygate/backend/store/redisstore"
	"github.com/keygate/keygate/internal/redisurl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// the first signal drains (run); a second one, default again, ends
	// the process at once
	go func() { <-ctx.Done(); stop() }()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "reports" {
		err = reports(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
	} else {
		err = run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil)
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "backend:", err)
		}
		os.Exit(2)
	}
}

// config is the parsed command line.
type config struct {
	listen, dataDir, secret string
	redis                   redisConfig
	maxUpload, maxSecret    int64
	insecure                bool
	logLevel                slog.Level
}

// embeddedStorePath is where the embedded store lives, without -redis.
func (c config) embeddedStorePath() string { return filepath.Join(c.dataDir, "backend.db") }

// redisConfig says which Redis holds the store; an empty URL means the
// embedded store.
type redisConfig struct {
	url      string
	cluster  bool   // url names Redis Cluster nodes
	sentinel string // url names Sentinels monitoring this master
}

// redisFlags defines the flags that choose the store, the same for both
// commands; what says what an empty -redis does.
func redisFlags(fs *flag.FlagSet, r *redisConfig, getenv func(string) string, what string) error {
	cluster := false
	if v := getenv("BACKEND_REDIS_CLUSTER"); v != "" {
		var err error
		if cluster, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("BACKEND_REDIS_CLUSTER: %q is neither true nor false", v)
		}
	}
	fs.StringVar(&r.url, "redis", envOr(getenv, "BACKEND_REDIS_URL", ""), "Redis `URL`; empty "+what+" (env BACKEND_REDIS_URL)")
	fs.BoolVar(&r.cluster, "redis-cluster", cluster, "the Redis URL names Redis Cluster nodes: one, more as addr options (env BACKEND_REDIS_CLUSTER)")
	fs.StringVar(&r.sentinel, "redis-sentinel", envOr(getenv, "BACKEND_REDIS_SENTINEL", ""),
		"the Redis URL names Sentinels (one, more as addr options) monitoring the primary under this `master` name (env BACKEND_REDIS_SENTINEL)")
	return nil
}

// envOr is the environment variable k, or def when it is empty.
func envOr(getenv func(string) string, k, def string) string {
	if v := getenv(k); v != "" {
		return v
	}
	return def
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	c := config{maxUpload: backend.DefaultMaxUpload, maxSecret: backend.DefaultMaxSecret}
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.listen, "listen", envOr(getenv, "BACKEND_LISTEN", "127.0.0.1:8081"), "listen `address` (env BACKEND_LISTEN)")
	fs.StringVar(&c.dataDir, "data", envOr(getenv, "BACKEND_DATA_DIR", "./data"), "data `directory`: images and the embedded database (env BACKEND_DATA_DIR)")
	if err := redisFlags(fs, &c.redis, getenv, "uses the embedded store <data>/backend.db"); err != nil {
		return c, err
	}
	fs.StringVar(&c.secret, "upstream-secret", envOr(getenv, "KEYGATE_UPSTREAM_SECRET", ""), "shared `secret` the gateway sends in X-Keygate-Upstream-Secret (env KEYGATE_UPSTREAM_SECRET; prefer the env var)")
	fs.BoolVar(&c.insecure, "insecure-no-secret", false, "accept requests without the upstream secret (never in production)")
	upload := &sizeFlag{&c.maxUpload}
	secret := &sizeFlag{&c.maxSecret}
	for _, e := range []struct {
		env string
		f   *sizeFlag
	}{{"BACKEND_MAX_UPLOAD", upload}, {"BACKEND_MAX_SECRET", secret}} {
		if v := getenv(e.env); v != "" {
			if err := e.f.Set(v); err != nil {
				return c, fmt.Errorf("%s: %w", e.env, err)
			}
		}
	}
	fs.Var(upload, "max-upload", "largest image `size`, e.g. 20MiB (env BACKEND_MAX_UPLOAD)")
	fs.Var(secret, "max-secret", "largest encrypted secret `size`, e.g. 1MiB (env BACKEND_MAX_SECRET)")
	level := envOr(getenv, "BACKEND_LOG_LEVEL", "info")
	fs.StringVar(&level, "log-level", level, "debug, info, warn or error (env BACKEND_LOG_LEVEL)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if err := c.logLevel.UnmarshalText([]byte(level)); err != nil {
		return c, fmt.Errorf("-log-level: %w", err)
	}
	if c.secret == "" && !c.insecure {
		return c, errors.New("no upstream secret: set KEYGATE_UPSTREAM_SECRET (the value the gateway sends in " +
			backend.HeaderUpstreamSecret + "), or pass -insecure-no-secret to accept unauthenticated requests")
	}
	if c.secret != "" && c.insecure {
		return c, errors.New("-insecure-no-secret given together with an upstream secret: pick one")
	}
	return c, nil
}

// run starts the backend and serves until ctx is done, then shuts down
// gracefully. ready, if not nil, receives the bound address (tests listen on
// port 0).
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready chan<- net.Addr) error {
	c, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: c.logLevel}))
	if c.insecure {
		log.Warn("running WITHOUT the upstream secret: anyone who can reach this address can act as any key")
	}
	if err := os.MkdirAll(c.dataDir, 0o750); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}

	st, err := openStore(ctx, c)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("closing store", "err", err)
		}
	}()

	h, err := backend.New(backend.Config{
		Store: st, DataDir: c.dataDir, UpstreamSecret: c.secret, InsecureNoSecret: c.insecure,
		MaxUpload: c.maxUpload, MaxSecret: c.maxSecret, Logger: log,
	})
	if err != nil {
		return err
	}
	// requests being served, so that a stop closes the store only once
	// they returned
	var serving atomic.Int64
	srv := newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		serving.Add(1)
		defer serving.Add(-1)
		h.ServeHTTP(w, r)
	}), log)
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	storeDesc := "embedded " + c.embeddedStorePath()
	switch {
	case c.redis.cluster:
		storeDesc = "redis cluster"
	case c.redis.sentinel != "":
		storeDesc = "redis sentinel"
	case c.redis.url != "":
		storeDesc = "redis"
	}
	log.Info("backend listening", "addr", ln.Addr().String(), "data", c.dataDir, "store", storeDesc,
		"max_upload", c.maxUpload, "max_secret", c.maxSecret)
	if ready != nil {
		ready <- ln.Addr()
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// the requests still running are cut off (their connections
		// closed) before the deferred Close takes the store from under
		// them
		log.Warn("requests still running after the grace period: closing their connections", "grace", shutdownGrace)
		_ = srv.Close()
		// those that read their bodies see their contexts end and return
		// soon; one stuck in a store call before that is not waited for
		// past 2 s (the store's close then ends it)
		for deadline := time.Now().Add(2 * time.Second); serving.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// shutdownGrace is how long a stopping backend lets the requests it is
// serving finish (compose's stop_grace_period, 20 s, gives it that and the
// 2 s it then waits for those cut off to return).
var shutdownGrace = 15 * time.Second

// newServer is the backend's HTTP server, serving h.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// Generous enough for a 20 MiB upload on a slow link, bounded all
		// the same so that a trickling client cannot hold a connection.
		ReadTimeout:  5 * time.Minute,
		WriteTimeout: 5 * time.Minute,
		// Longer than the gateway keeps an idle connection to it (Caddy's
		// reverse_proxy: 2 minutes): at equal times the backend could
		// close one just as the gateway sent a request on it, which the
		// gateway does not send again if it is a POST (a 502).
		IdleTimeout:    5 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

func openStore(ctx context.Context, c config) (store.Store, error) {
	r := c.redis
	switch {
	case r.cluster && r.sentinel != "":
		return nil, errors.New("-redis-cluster and -redis-sentinel exclude each other")
	case r.url == "" && (r.cluster || r.sentinel != ""):
		return nil, errors.New("-redis-cluster and -redis-sentinel need -redis, the URL of the nodes or Sentinels")
	case r.url == "":
		return boltstore.Open(c.embeddedStorePath(), boltstore.Options{})
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var (
		st  *redisstore.Store
		err error
	)
	switch {
	case r.cluster:
		st, err = redisstore.OpenCluster(octx, r.url, redisstore.DefaultPrefix, store.Config{})
	case r.sentinel != "":
		st, err = redisstore.OpenSentinel(octx, r.url, r.sentinel, redisstore.DefaultPrefix, store.Config{})
	default:
		st, err = redisstore.Open(octx, r.url, redisstore.DefaultPrefix, store.Config{})
		err = redisurl.MoreServers(r.url, err, "-redis-cluster", "-redis-sentinel <master name>")
	}
	if err != nil {
		return nil, err // not a nil *Store in a non-nil interface
	}
	return st, nil
}

// sizeFlag parses byte sizes: 1048576, 512KiB, 20MiB, 1GiB (also KB/MB/GB
// as the same powers of two, and K/M/G).
type sizeFlag struct{ v *int64 }

func (f *sizeFlag) String() string {
	if f == nil || f.v == nil {
		return ""
	}
	return strconv.FormatInt(*f.v, 10)
}

func (f *sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*f.v = n
	return nil
}

func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("invalid size %q (want e.g. 1048576, 512KiB or 20MiB)", s)
	}
	return n * mult, nil
}
