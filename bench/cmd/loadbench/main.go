// Command loadbench measures what keygate costs per request: it builds plain
// Caddy and keygate from this module, starts a real redis-server (none with
// -store embedded, keygate's in-process store) and a tiny upstream, and
// drives both proxies with the same wrk load, alternating rounds so that
// drift of a shared machine hits both alike. It prints, per configuration,
// requests/s and p50/p99 latency of each and the ratio keygate/plain
// (median over rounds).
//
// With -accuracy it instead runs three keygate instances on one Redis and
// many concurrent clients on one key, and reports how many requests each
// algorithm admitted against the limit.
//
// Run it with ./bench/run (which installs wrk and redis-server if needed).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/internal/benchheaders"
	"github.com/keygate/keygate/internal/benchupstream"
	"github.com/keygate/keygate/internal/freeport"
	"github.com/keygate/keygate/internal/redisstats"
)

var (
	flagDuration = flag.Duration("duration", 5*time.Second, "length of each measured wrk run (whole seconds)")
	flagWarmup   = flag.Duration("warmup", 2*time.Second, "unmeasured wrk run of the same proxy and load before each measured one, so each is measured warm (whole seconds; 0: none)")
	flagRounds   = flag.Int("rounds", 3, "measured rounds per configuration and proxy (order alternates each round)")
	flagConns    = flag.String("conns", "8,64", "comma-separated wrk connection counts")
	flagThreads  = flag.Int("threads", 2, "wrk threads (capped at the connection count)")
	flagKeys     = flag.Int("keys", 10000, "distinct keys in the many-keys configurations")
	flagOnly     = flag.String("only", "", "comma-separated configuration names to run (default: all), e.g. 1key/sliding_window,anon/sliding_log")
	flagPprof    = flag.String("pprof", "", "directory: save a CPU profile and an allocs profile of each proxy during the first round of each configuration (<config>-c<conns>-<proxy>.cpu.pprof; compare with go tool pprof -diff_base)")
	flagWork     = flag.String("workdir", "", "directory for binaries, configs and logs (default: a temp dir, removed at exit)")
	flagStore    = flag.String("store", "redis", "keygate's store: redis (a redis-server the benchmark starts, as several gateways share one) or embedded (keygate's default, in process: no network store, so the ratios are keygate's own cost; -lease and -accuracy need redis)")
	flagLease    = flag.Int("lease", 0, "keygate's lease option on every route (0: off, every request counted in Redis)")
	flagLeaseUp  = flag.Duration("lease-warmup", 3*time.Minute, "with -lease: at most this long of unmeasured keygate runs before a configuration's first round, in slices of 30 s until its store calls per request are the least a lease allows, so its leases have grown to the size the load keeps them at, as in service (a lease at most doubles per grant: 10,000 keys take all of it)")
	flagControl  = flag.Bool("control", false, "a second plain Caddy takes keygate's place: the ratios then measure this machine's noise, the same proxy against itself")
	flagHeaders  = flag.String("rate-limit-headers", "", "keygate's rate_limit_headers option on every route (both, x-ratelimit, ietf, none; default: keygate's, both); with -same-headers plain Caddy sends the same")
	flagSameHdrs = flag.Bool("same-headers", false, "plain Caddy also sends the headers keygate adds (rate-limit headers to the client, identity headers to the upstream, values of the same length) and drops the key: the ratios then measure keygate's work beyond what its headers cost")
	flagPaced    = flag.Float64("paced", 0, "pace each configuration's load at about this fraction of plain Caddy's throughput (0 < f < 1; measured in a run of plain Caddy first): every connection waits a random think time between requests, the same for both proxies, so p50 and p99 compare what each proxy adds to a request at the same load (unpaced, both run flat out, and p50 is the connection count over the throughput)")
	flagAccuracy = flag.Bool("accuracy", false, "run the accuracy test instead of the load benchmark")
	flagAccLimit = flag.Int64("accuracy-limit", 100, "accuracy: the rate limit (per minute)")
	flagAccReqs  = flag.Int("accuracy-requests", 1000, "accuracy: requests sent per trial")
	flagAccConc  = flag.Int("accuracy-clients", 150, "accuracy: concurrent clients")
	flagAccTrial = flag.Int("accuracy-trials", 3, "accuracy: trials per algorithm (each on a fresh key)")
)

var algorithms = []string{"sliding_window", "sliding_log"}

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (err error) {
	if *flagControl && (*flagLease > 0 || *flagAccuracy) {
		return errors.New("-control runs plain Caddy on both sides: -lease and -accuracy do not apply")
	}
	switch *flagStore {
	case "redis":
	case "embedded":
		if *flagLease > 0 || *flagAccuracy || *flagControl {
			return errors.New("-store embedded: -lease, -accuracy and -control need the Redis store (the embedded store limits in process: a lease would save nothing)")
		}
	default:
		return fmt.Errorf("-store %q: redis or embedded", *flagStore)
	}
	if *flagRounds < 1 || *flagThreads < 1 {
		return fmt.Errorf("-rounds %d, -threads %d: at least 1 each", *flagRounds, *flagThreads)
	}
	switch *flagHeaders {
	case "", "both", "x-ratelimit", "ietf", "none":
	default:
		return fmt.Errorf("-rate-limit-headers %q: both, x-ratelimit, ietf or none", *flagHeaders)
	}
	if *flagPaced < 0 || *flagPaced >= 1 {
		return fmt.Errorf("-paced %v: a fraction of plain Caddy's throughput, above 0 and below 1", *flagPaced)
	}
	tools := []string{"go"}
	if *flagStore == "redis" {
		tools = append(tools, "redis-server")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found in PATH (apt-get install redis-server; ./bench/run installs it)", tool)
		}
	}
	if !*flagAccuracy {
		if _, err := exec.LookPath("wrk"); err != nil {
			return errors.New("wrk not found in PATH: apt-get install wrk (./bench/run installs it)")
		}
	}
	dir := *flagWork
	if dir == "" {
		d, mkErr := os.MkdirTemp("", "keygate-bench-")
		if mkErr != nil {
			return mkErr
		}
		// A failed run keeps its logs and configs: its error points at them.
		defer func() {
			if err != nil && ctx.Err() == nil {
				fmt.Fprintf(os.Stderr, "loadbench: logs, configs and binaries kept in %s (remove it when done)\n", d)
				return
			}
			os.RemoveAll(d)
		}()
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var procs procSet
	defer procs.stopAll()

	if err := build(ctx, dir); err != nil {
		return err
	}
	redisURL := "" // the embedded store
	if *flagStore == "redis" {
		url, err := startRedis(ctx, &procs, dir)
		if err != nil {
			return err
		}
		redisURL = url
	}
	upstream, err := startUpstream()
	if err != nil {
		return err
	}
	if *flagAccuracy {
		return accuracy(ctx, &procs, dir, redisURL, upstream)
	}
	return loadBench(ctx, &procs, dir, redisURL, upstream)
}

// build compiles plain Caddy and keygate from this module's graph, so both
// run the same Caddy version with the same compiler.
func build(ctx context.Context, dir string) error {
	for _, b := range []struct{ out, pkg string }{
		{"caddy", "github.com/caddyserver/caddy/v2/cmd/caddy"},
		{"keygate", "./cmd/keygate"},
	} {
		logf("building %s (%s)", b.out, b.pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building %s: %w", b.pkg, err)
		}
	}
	return nil
}

// ---------------------------------------------------------------- processes

type procSet struct {
	mu    sync.Mutex
	procs []*exec.Cmd
}

// start launches a child in its own process group with its output in logPath.
func (p *procSet) start(name string, args []string, env []string, logPath string) (*exec.Cmd, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), env...)
	// Pdeathsig: a child outlives no loadbench killed without its cleanup
	// (SIGKILL, a panic), which would leave proxies and Redis on the ports
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	logFile.Close() // the child holds its own descriptor
	p.mu.Lock()
	p.procs = append(p.procs, cmd)
	p.mu.Unlock()
	return cmd, nil
}

// stopAll terminates every child it started (their process groups), then
// kills what has not exited within two seconds.
func (p *procSet) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	done := make(chan struct{})
	for _, c := range p.procs {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	go func() {
		for _, c := range p.procs {
			_ = c.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		for _, c := range p.procs {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
		<-done
	}
	p.procs = nil
}

func waitFor(ctx context.Context, what string, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ok() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready within %s", what, timeout)
}

// startRedis starts redis-server and returns the URL keygate uses for it.
func startRedis(ctx context.Context, procs *procSet, dir string) (string, error) {
	port, err := freeport.Find()
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
	}
	url := "redis://" + addr + "/0"
	cmd, err := procs.start("redis-server", args, nil, filepath.Join(dir, "redis.log"))
	if err != nil {
		return "", fmt.Errorf("starting redis-server: %w", err)
	}
	redisPID = cmd.Process.Pid
	redisClient = redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	err = waitFor(ctx, "redis-server", 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_, _ = c.Write([]byte("PING\r\n"))
		buf := make([]byte, 7)
		_, err = io.ReadFull(c, buf)
		return err == nil && string(buf) == "+PONG\r\n"
	})
	logf("redis-server on %s", url)
	return url, err
}

// startUpstream serves a short body, as fast as Go's server does, in this
// process (it is idle between runs and costs both proxies the same).
func startUpstream() (string, error) {
	addr, _, err := benchupstream.Start()
	if err != nil {
		return "", err
	}
	logf("upstream on %s", addr)
	return addr, nil
}

// proxy is one running Caddy (plain or keygate).
type proxy struct {
	name  string
	addr  string // site, 127.0.0.1:port
	admin string // admin API, 127.0.0.1:port
	pid   int
}

// redisPID is the benchmark's redis-server, whose CPU time each run
// reports, and redisClient reads its command counts (0 and nil with
// -store embedded: no Redis runs).
var (
	redisPID    int
	redisClient *redis.Client
)

// scriptCalls is how many scripts Redis has run so far (EVALSHA and EVAL,
// each call in a pipeline counted): keygate's store calls, so that calls
// per request shows how many requests leases admit without one. Zero when
// Redis does not say.
func scriptCalls(ctx context.Context) int64 {
	if redisClient == nil {
		return 0
	}
	info, err := redisClient.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0
	}
	stats := redisstats.Parse(info)
	return stats["evalsha"].Calls + stats["eval"].Calls
}

// routes are the same paths on both proxies, so the matching work is
// identical; on keygate each carries its keygate handler.
var routes = []struct{ path, keygate string }{
	{"/sliding_window/", "rate_limit " + benchheaders.Limit + "\n\t\t\talgorithm sliding_window"},
	{"/sliding_log/", "rate_limit " + benchheaders.Limit + "\n\t\t\talgorithm sliding_log"},
	{"/anon/sliding_window/", "anonymous " + benchheaders.Limit + "\n\t\t\talgorithm sliding_window"},
	{"/anon/sliding_log/", "anonymous " + benchheaders.Limit + "\n\t\t\talgorithm sliding_log"},
}

// caddyfile renders the config of one proxy. Both use reverse_proxy with
// its default transport (keep-alive to the upstream, pooled); they differ
// only by the keygate handlers and the keygate global option, which names
// the Redis store (redisURL; empty: keygate's embedded store, which needs
// no global option).
func caddyfile(withKeygate bool, site, admin, redisURL, upstream string, rateLimit string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\tlevel WARN\n\t}\n", admin)
	if withKeygate && redisURL != "" {
		fmt.Fprintf(&b, "\tkeygate {\n\t\tredis %s\n\t}\n", redisURL)
	}
	fmt.Fprintf(&b, "}\n\nhttp://%s {\n", site)
	for _, r := range routes {
		fmt.Fprintf(&b, "\thandle %s* {\n", r.path)
		if withKeygate {
			kg := r.keygate
			if rateLimit != "" {
				kg = strings.ReplaceAll(kg, benchheaders.Limit, rateLimit)
			}
			if *flagLease > 0 {
				kg += "\n\t\t\tlease " + strconv.Itoa(*flagLease)
			}
			if *flagHeaders != "" {
				kg += "\n\t\t\trate_limit_headers " + *flagHeaders
			}
			fmt.Fprintf(&b, "\t\tkeygate {\n\t\t\t%s\n\t\t}\n", kg)
		}
		if !withKeygate && *flagSameHdrs {
			anonymous := strings.HasPrefix(r.path, "/anon/")
			b.WriteString(benchheaders.Response("\t\t", anonymous, *flagHeaders))
			fmt.Fprintf(&b, "\t\treverse_proxy %s {\n%s\t\t}\n\t}\n", upstream, benchheaders.Upstream("\t\t\t", anonymous))
			continue
		}
		fmt.Fprintf(&b, "\t\treverse_proxy %s\n\t}\n", upstream)
	}
	if withKeygate {
		b.WriteString("\thandle_errors {\n\t\tkeygate_errors\n\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func startProxy(ctx context.Context, procs *procSet, dir, name, bin string, withKeygate bool, redisURL, upstream, rateLimit string) (*proxy, error) {
	sitePort, err := freeport.Find()
	if err != nil {
		return nil, err
	}
	adminPort, err := freeport.Find()
	if err != nil {
		return nil, err
	}
	p := &proxy{name: name, addr: "127.0.0.1:" + strconv.Itoa(sitePort), admin: "127.0.0.1:" + strconv.Itoa(adminPort)}
	cfgPath := filepath.Join(dir, name+".Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(caddyfile(withKeygate, p.addr, p.admin, redisURL, upstream, rateLimit)), 0o644); err != nil {
		return nil, err
	}
	home := filepath.Join(dir, name+"-home")
	env := []string{"HOME=" + home, "XDG_DATA_HOME=" + home + "/data", "XDG_CONFIG_HOME=" + home + "/config"}
	cmd, err := procs.start(filepath.Join(dir, bin), []string{"run", "--config", cfgPath, "--adapter", "caddyfile"}, env, filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p.pid = cmd.Process.Pid
	err = waitFor(ctx, name, 20*time.Second, func() bool {
		resp, err := http.Get("http://" + p.admin + "/config/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, name+".log"))
		return nil, fmt.Errorf("%w; its log:\n%s", err, log)
	}
	logf("%s on %s (admin %s)", name, p.addr, p.admin)
	return p, nil
}

// createKeys makes n keys through keygate's admin API, a few at a time.
func createKeys(ctx context.Context, admin string, n int, prefix string) (keys, ids []string, err error) {
	keys, ids = make([]string, n), make([]string, n)
	err = parallel(ctx, n, func(i int) error {
		body := fmt.Sprintf(`{"name": %q}`, prefix+strconv.Itoa(i))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+"/keygate/keys", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := parallelClient.Do(req)
		if err != nil {
			return err
		}
		var v struct {
			Key string `json:"key"`
			ID  string `json:"id"`
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(raw, &v) != nil || v.Key == "" {
			return fmt.Errorf("creating a key: %s: %s", resp.Status, raw)
		}
		keys[i], ids[i] = v.Key, v.ID
		return nil
	})
	return keys, ids, err
}

// touchAll sends one request per key to url, so the gateway's key cache is
// warm, as it is in steady state (first sight of a key costs a lookup).
func touchAll(ctx context.Context, url string, keys []string) error {
	var failed atomic.Int64
	err := parallel(ctx, len(keys), func(i int) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+keys[i])
		resp, err := parallelClient.Do(req)
		if err != nil {
			failed.Add(1)
			return nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			failed.Add(1)
		}
		return nil
	})
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("warming %s: %d of %d requests failed", url, n, len(keys))
	}
	return err
}

// parallelism is how many goroutines parallel runs fn from.
const parallelism = 16

// parallelClient keeps a connection for each of parallel's goroutines.
var parallelClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: parallelism}}

// parallel calls fn for 0 <= i < n from parallelism goroutines, and stops
// at the first error it returns (or when ctx ends), which it returns.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range min(parallelism, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(n)) // the others stop too
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// ---------------------------------------------------------------- load

// wrkScript spreads requests over the keys in the file given as its first
// argument ("-": anonymous requests) to the path given as its second; each
// thread starts at its own offset and walks the list. With a third, a mean
// think time in ms (-paced), each connection waits between a response and
// its next request (delay), exponentially distributed, so that requests
// arrive as from many independent clients; wrk times a request from its
// write, so the wait is not part of its latency, and takes whole
// milliseconds, so each wait is rounded up or down at random, keeping the
// mean.
const wrkScript = `
local reqs = {}
local i = 0
function init(args)
  local path = args[2]
  if args[1] == "-" then
    reqs[1] = wrk.format("GET", path)
  else
    for line in io.lines(args[1]) do
      reqs[#reqs + 1] = wrk.format("GET", path, {["Authorization"] = "Bearer " .. line})
    end
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  i = math.random(#reqs)
  local think = tonumber(args[3])
  if think then
    function delay()
      return math.floor(-think * math.log(1 - math.random()) + math.random())
    end
  end
end
function request()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end
`

type result struct {
	rps      float64
	requests int64
	p50, p99 time.Duration
	non2xx   int64
	errors   int64
	// CPU time per request during the run
	cpu cpuUse
	// scheduling per request during the run: the proxy's, and the
	// upstream's (this process)
	proxySched, upstreamSched schedUse
	// scripts Redis ran per request during the run
	storeCalls float64
	// requests keygate leased during the run but did not admit in it
	// (lapsed, or still held), per request served
	leasedUnused float64
	// requests keygate admitted only after a store call of their own (no
	// lease held, or it was spent) or after waiting for their lease's
	// refill, per request served
	waited float64
}

var (
	reRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reReqs    = regexp.MustCompile(`(\d+) requests in`)
	reLat     = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	reNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	reSockErr = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func parseWrk(out string) (result, error) {
	var r result
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reReqs.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	for _, m := range reLat.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9}[m[3]]
		d := time.Duration(v * unit)
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if r.p50 == 0 || r.p99 == 0 {
		// a table of zeros would pass for a proxy with no latency
		return r, fmt.Errorf("no 50%% and 99%% latency in wrk output (--latency):\n%s", out)
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reSockErr.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.errors += n
		}
	}
	return r, nil
}

// config is one cell of the matrix.
type config struct {
	name  string // e.g. 10000keys/sliding_log
	path  string
	keys  []string // nil: anonymous
	conns int
	// with -paced, each connection's mean think time between requests
	// (0: none, flat out)
	thinkMs float64
}

func runWrk(ctx context.Context, dir string, p *proxy, c config, d time.Duration) (result, error) {
	threads := min(*flagThreads, c.conns)
	args := []string{"-t", strconv.Itoa(threads), "-c", strconv.Itoa(c.conns), "-d", strconv.Itoa(max(1, int((d+time.Second-1)/time.Second))) + "s",
		"--latency", "--timeout", "5s"}
	url := "http://" + p.addr + c.path
	switch {
	case len(c.keys) == 0 && c.thinkMs == 0:
		args = append(args, url)
	case len(c.keys) == 1 && c.thinkMs == 0:
		args = append(args, "-H", "Authorization: Bearer "+c.keys[0], url)
	default:
		keyFile := "-"
		if len(c.keys) > 0 {
			// written every run: a -workdir may hold the keys of an earlier one
			keyFile = filepath.Join(dir, fmt.Sprintf("keys-%d.txt", len(c.keys)))
			if err := os.WriteFile(keyFile, []byte(strings.Join(c.keys, "\n")+"\n"), 0o600); err != nil {
				return result{}, err
			}
		}
		script := filepath.Join(dir, "keys.lua")
		if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
			return result{}, err
		}
		args = append(args, "-s", script, url, "--", keyFile, c.path)
		if c.thinkMs > 0 {
			args = append(args, strconv.FormatFloat(c.thinkMs, 'f', 3, 64))
		}
	}
	wctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	callsBefore := scriptCalls(ctx)
	before := readGatewayCounters(ctx, p)
	cpuBefore := sampleCPU(p)
	proxySched, upstreamSched := sampleSched(p.pid), sampleSched(os.Getpid())
	wrk := exec.CommandContext(wctx, "wrk", args...)
	out, err := wrk.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	cpuAfter := sampleCPU(p)
	proxySchedAfter, upstreamSchedAfter := sampleSched(p.pid), sampleSched(os.Getpid())
	calls := scriptCalls(ctx) - callsBefore
	after := readGatewayCounters(ctx, p)
	r, err := parseWrk(string(out))
	if err == nil && r.requests > 0 {
		n := time.Duration(r.requests)
		r.cpu = cpuUse{
			proxy:    (cpuAfter.proxy - cpuBefore.proxy) / n,
			redis:    (cpuAfter.redis - cpuBefore.redis) / n,
			upstream: (cpuAfter.upstream - cpuBefore.upstream) / n,
			wrk:      (wrk.ProcessState.UserTime() + wrk.ProcessState.SystemTime()) / n,
			machine:  (cpuAfter.machine - cpuBefore.machine) / n,
			stolen:   (cpuAfter.stolen - cpuBefore.stolen) / n,
		}
		r.proxySched = proxySchedAfter.perRequest(proxySched, r.requests)
		r.upstreamSched = upstreamSchedAfter.perRequest(upstreamSched, r.requests)
		r.storeCalls = float64(calls) / float64(r.requests)
		leased, fromLeases := after.leased-before.leased, after.leaseAdmitted-before.leaseAdmitted
		r.leasedUnused = (leased - fromLeases) / float64(r.requests)
		ownCalls := after.admitted - before.admitted - fromLeases
		r.waited = (ownCalls + after.refillWaits - before.refillWaits) / float64(r.requests)
	}
	return r, err
}

// pace returns c paced at -paced of plain Caddy's throughput under c's
// load, measured in a flat-out run (after a warm-up): each of the c.conns
// connections thinks, on average, for the time one would take at that
// share of the throughput. The time each request takes is not taken off,
// so the pace comes out a little lower, alike for both proxies.
func pace(ctx context.Context, dir string, plain *proxy, c config) (config, error) {
	if *flagWarmup > 0 {
		if _, err := runWrk(ctx, dir, plain, c, *flagWarmup); err != nil {
			return c, err
		}
	}
	r, err := runWrk(ctx, dir, plain, c, *flagDuration)
	if err != nil {
		return c, err
	}
	if r.rps <= 0 {
		return c, fmt.Errorf("%s c=%d: plain Caddy served nothing in the pacing run", c.name, c.conns)
	}
	c.thinkMs = float64(c.conns) / (*flagPaced * r.rps) * 1000
	logf("%s c=%d: plain Caddy flat out %.0f rps; paced at %.2f: think %.2f ms per connection", c.name, c.conns, r.rps, *flagPaced, c.thinkMs)
	return c, nil
}

// leaseWarmupSlice is how long each of warmLeases' runs lasts: long enough
// for a key of the 10,000 to be seen about twenty times.
const leaseWarmupSlice = 30 * time.Second

// warmLeases runs keygate alone under c's load, in slices, until its leases
// have grown to the size the load keeps them at, as they would have in
// service: until a slice makes no more than 1.25 store calls per lease-full
// of requests (the least a lease allows), or -lease-warmup is spent. A busy
// key gets there in the first slice; 10,000 keys, each seen every second or
// two and each lease at most twice the one before, take minutes, their
// store calls falling slice by slice with a slice's noise on top: a slice
// that makes no fewer than the one before does not say they stopped.
func warmLeases(ctx context.Context, dir string, kg *proxy, c config) error {
	start := time.Now()
	var trace []string
	for {
		r, err := runWrk(ctx, dir, kg, c, min(leaseWarmupSlice, *flagLeaseUp-time.Since(start)))
		if err != nil {
			return err
		}
		trace = append(trace, fmt.Sprintf("%.3f", r.storeCalls))
		if r.storeCalls <= 1.25/float64(*flagLease) || time.Since(start)+time.Second > *flagLeaseUp {
			break
		}
	}
	logf("%s c=%d: lease warm-up %s, store calls/req by slice %s", c.name, c.conns,
		time.Since(start).Round(time.Second), strings.Join(trace, " "))
	return nil
}

// gatewayCounters are keygate's metrics that the table reports on (zero
// for plain Caddy, or when unreadable).
type gatewayCounters struct {
	leased        float64 // requests leased beyond the asking ones
	leaseAdmitted float64 // requests admitted from leases
	admitted      float64 // requests admitted, with a key or anonymous
	refillWaits   float64 // requests that found their lease spent and waited for its refill
}

// readGatewayCounters reads them from p's admin /metrics.
func readGatewayCounters(ctx context.Context, p *proxy) (c gatewayCounters) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/metrics", nil)
	resp, err := parallelClient.Do(req)
	if err != nil {
		return c
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, _ := strings.Cut(sc.Text(), " ")
		v, _ := strconv.ParseFloat(value, 64)
		switch name {
		case "keygate_lease_granted_requests_total":
			c.leased = v
		case "keygate_lease_admitted_requests_total":
			c.leaseAdmitted = v
		case `keygate_decisions_total{outcome="allowed"}`, `keygate_decisions_total{outcome="anonymous"}`:
			c.admitted += v
		case "keygate_lease_refill_waits_total":
			c.refillWaits = v
		}
	}
	return c
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func medianDur(ds []time.Duration) time.Duration {
	return time.Duration(medianBy(ds, func(d time.Duration) float64 { return float64(d) }))
}

// medianBy is the median of f over xs: one field of a run's measurements
// over the rounds.
func medianBy[T any](xs []T, f func(T) float64) float64 {
	vs := make([]float64, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	return median(vs)
}

func loadBench(ctx context.Context, procs *procSet, dir, redisURL, upstream string) error {
	plain, err := startProxy(ctx, procs, dir, "plain", "caddy", false, redisURL, upstream, "")
	if err != nil {
		return err
	}
	var kg *proxy
	if *flagControl {
		kg, err = startProxy(ctx, procs, dir, "control", "caddy", false, redisURL, upstream, "")
	} else {
		kg, err = startProxy(ctx, procs, dir, "keygate", "keygate", true, redisURL, upstream, "")
	}
	if err != nil {
		return err
	}
	var conns []int
	for _, s := range strings.Split(*flagConns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad -conns %q", *flagConns)
		}
		conns = append(conns, n)
	}
	only := map[string]bool{}
	for _, s := range strings.Split(*flagOnly, ",") {
		if s = strings.TrimSpace(s); s != "" {
			only[s] = true
		}
	}
	want := func(name string) bool { return len(only) == 0 || only[name] }

	manyName := strconv.Itoa(*flagKeys) + "keys"
	needMany := false
	for _, a := range algorithms {
		needMany = needMany || want(manyName+"/"+a)
	}
	n := 1
	if needMany {
		n = *flagKeys
	}
	start := time.Now()
	var keys []string
	if *flagControl {
		// plain Caddy passes any key on: the requests only need to look alike
		for i := range n {
			keys = append(keys, fmt.Sprintf("sk_control%032d", i))
		}
	} else if keys, _, err = createKeys(ctx, kg.admin, n, "bench-"); err != nil {
		return err
	} else {
		logf("created %d keys in %s", n, time.Since(start).Round(time.Millisecond))
	}

	var configs []config
	for _, a := range algorithms {
		for _, c := range conns {
			configs = append(configs, config{name: "1key/" + a, path: "/" + a + "/x", keys: keys[:1], conns: c})
		}
	}
	if needMany {
		for _, a := range algorithms {
			for _, c := range conns {
				configs = append(configs, config{name: manyName + "/" + a, path: "/" + a + "/x", keys: keys, conns: c})
			}
		}
	}
	for _, a := range algorithms {
		for _, c := range conns {
			configs = append(configs, config{name: "anon/" + a, path: "/anon/" + a + "/x", conns: c})
		}
	}
	configs = slices.DeleteFunc(configs, func(c config) bool { return !want(c.name) })
	if len(configs) == 0 {
		return fmt.Errorf("-only %q matches no configuration", *flagOnly)
	}
	if needMany && !*flagControl {
		start := time.Now()
		for _, a := range algorithms {
			if err := touchAll(ctx, "http://"+kg.addr+"/"+a+"/x", keys); err != nil {
				return err
			}
		}
		logf("warmed keygate's key cache in %s", time.Since(start).Round(time.Millisecond))
	}
	if *flagPprof != "" {
		if err := os.MkdirAll(*flagPprof, 0o755); err != nil {
			return err
		}
	}
	perRun := time.Duration(2**flagRounds) * (*flagWarmup + *flagDuration)
	if *flagLease > 0 {
		perRun += min(leaseWarmupSlice, *flagLeaseUp) // more for the 10,000 keys (warmLeases)
	}
	if *flagPaced > 0 {
		perRun += *flagWarmup + *flagDuration // pace's run of plain Caddy
	}
	logf("%d configurations x %d rounds x 2 proxies x (%s warm-up + %s): about %s",
		len(configs), *flagRounds, *flagWarmup, *flagDuration, (time.Duration(len(configs)) * perRun).Round(time.Second))

	type row struct {
		c                           config
		plainRPS, kgRPS, ratio      float64
		plainP50, kgP50, plainP99   time.Duration
		kgP99                       time.Duration
		ratios                      []float64
		plainBad, kgBad, sockErrors int64
		// CPU per request on plain Caddy's runs and on keygate's
		plainCPU, kgCPU cpuUse
		// scheduling per request of each proxy, and of the upstream on
		// each proxy's runs
		plainSched, kgSched, plainUpSched, kgUpSched schedUse

		storeCalls   float64 // per request, keygate's runs
		leasedUnused float64 // per request, keygate's runs
		waited       float64 // per request, keygate's runs
	}
	var rows []row
	for _, c := range configs {
		var pr, kr []result
		if *flagPaced > 0 {
			if c, err = pace(ctx, dir, plain, c); err != nil {
				return err
			}
		}
		if *flagLease > 0 && *flagLeaseUp > 0 {
			if err := warmLeases(ctx, dir, kg, c); err != nil {
				return err
			}
		}
		for round := range *flagRounds {
			order := []*proxy{plain, kg}
			if round%2 == 1 {
				order = []*proxy{kg, plain}
			}
			for _, p := range order {
				// Warm, as in service: pooled upstream connections for
				// both, and for keygate its key cache and any leases,
				// which lapse while the other proxy has its turn.
				if *flagWarmup > 0 {
					if _, err := runWrk(ctx, dir, p, c, *flagWarmup); err != nil {
						return err
					}
				}
				var prof chan error
				if round == 0 && *flagPprof != "" {
					prof = make(chan error, 1)
					go func() { prof <- cpuProfile(ctx, p, c, *flagDuration) }()
				}
				r, err := runWrk(ctx, dir, p, c, *flagDuration)
				if err != nil {
					return err
				}
				if prof != nil {
					if err := <-prof; err != nil {
						return err
					}
				}
				if p == plain {
					pr = append(pr, r)
				} else {
					kr = append(kr, r)
				}
			}
		}
		rw := row{c: c}
		var prps, krps []float64
		var p50s, k50s, p99s, k99s []time.Duration
		var pcpu, kcpu []cpuUse
		var psched, ksched, pup, kup []schedUse
		var calls, unused, waited []float64
		for i := range pr {
			calls = append(calls, kr[i].storeCalls)
			unused = append(unused, kr[i].leasedUnused)
			waited = append(waited, kr[i].waited)
			pcpu, kcpu = append(pcpu, pr[i].cpu), append(kcpu, kr[i].cpu)
			psched, ksched = append(psched, pr[i].proxySched), append(ksched, kr[i].proxySched)
			pup, kup = append(pup, pr[i].upstreamSched), append(kup, kr[i].upstreamSched)
			prps, krps = append(prps, pr[i].rps), append(krps, kr[i].rps)
			p50s, k50s = append(p50s, pr[i].p50), append(k50s, kr[i].p50)
			p99s, k99s = append(p99s, pr[i].p99), append(k99s, kr[i].p99)
			rw.ratios = append(rw.ratios, kr[i].rps/pr[i].rps)
			rw.plainBad += pr[i].non2xx
			rw.kgBad += kr[i].non2xx
			rw.sockErrors += pr[i].errors + kr[i].errors
		}
		rw.plainRPS, rw.kgRPS, rw.ratio = median(prps), median(krps), medianRatio(rw.ratios)
		rw.plainP50, rw.kgP50, rw.plainP99, rw.kgP99 = medianDur(p50s), medianDur(k50s), medianDur(p99s), medianDur(k99s)
		rw.plainCPU, rw.kgCPU = medianCPU(pcpu), medianCPU(kcpu)
		rw.plainSched, rw.kgSched = medianSched(psched), medianSched(ksched)
		rw.plainUpSched, rw.kgUpSched = medianSched(pup), medianSched(kup)
		rw.storeCalls, rw.leasedUnused, rw.waited = median(calls), median(unused), median(waited)
		rows = append(rows, rw)
		logf("%-26s c=%-3d plain %8.0f rps  %s %8.0f rps  ratio %.3f  (rounds: %s)  p50 %s / %s",
			c.name, c.conns, rw.plainRPS, kg.name, rw.kgRPS, rw.ratio, fmtRatios(rw.ratios), fmtDur(rw.plainP50), fmtDur(rw.kgP50))
		if rw.plainBad+rw.kgBad > 0 {
			return fmt.Errorf("%s c=%d: non-2xx responses (plain %d, keygate %d): a limit was hit or a proxy failed; see %s", c.name, c.conns, rw.plainBad, rw.kgBad, dir)
		}
	}

	fmt.Printf("\n%s vs plain Caddy reverse_proxy: wrk -t%d, %s x %d rounds (alternating), medians; %d CPUs\n\n",
		kg.name, *flagThreads, *flagDuration, *flagRounds, numCPU())
	if *flagControl {
		fmt.Print("control: plain Caddy in keygate's place; its ratios are this machine's noise\n\n")
	}
	if *flagStore == "embedded" {
		fmt.Print("embedded store: keygate keeps its keys and limits in process, no Redis; the ratios are\nkeygate's own cost (every request is a store call of its own: waited/req 1)\n\n")
	}
	if *flagSameHdrs {
		fmt.Print("same headers: plain Caddy sends the headers keygate adds and drops the key; the ratios are\nkeygate's work beyond what its headers cost\n\n")
	}
	if *flagHeaders != "" {
		fmt.Printf("rate_limit_headers %s on every keygate route\n\n", *flagHeaders)
	}
	if *flagPaced > 0 {
		fmt.Printf("paced at about %.2f of plain Caddy's throughput (a think time between requests): a ratio near 1\nsays keygate kept the pace; Δp50 is what it adds to a request's latency at that load\n\n", *flagPaced)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.ReplaceAll("configuration\tconns\tplain rps\tkeygate rps\tratio\tplain p50\tkeygate p50\tΔp50\tplain p99\tkeygate p99\tCPU/req plain\tkeygate\tredis\tstore calls/req\twaited/req\tleased unused/req\tnon-2xx\t", "keygate", kg.name))
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%d\t\n", r.c.name, r.c.conns, r.plainRPS, r.kgRPS, r.ratio,
			fmtDur(r.plainP50), fmtDur(r.kgP50), fmtDur(r.kgP50-r.plainP50), fmtDur(r.plainP99), fmtDur(r.kgP99),
			fmtMicros(r.plainCPU.proxy), fmtMicros(r.kgCPU.proxy), fmtMicros(r.kgCPU.redis), r.storeCalls, r.waited, r.leasedUnused, r.plainBad+r.kgBad)
	}
	tw.Flush()
	fmt.Println()
	fmt.Print(targets(rows, func(r row) targetRow {
		return targetRow{conns: r.c.conns, rounds: r.ratios, dp50: r.kgP50 - r.plainP50}
	}))
	fmt.Println("\nratio = keygate rps / plain rps per round, median over rounds; CPU/req = CPU time of the proxy")
	fmt.Println("(and of redis-server during keygate's runs) over the requests served; store calls/req = scripts")
	fmt.Println("Redis ran per request keygate served; waited/req = requests keygate admitted only after a store")
	fmt.Println("call of their own (no lease held, or it was spent) or after waiting for their lease's refill,")
	fmt.Println("per request served; leased unused/req = requests keygate leased in a run and did not admit in")
	fmt.Println("it (lapsed, or still held), per request served; socket errors:",
		sumSockErrors(rows, func(r row) int64 { return r.sockErrors }))

	// Where the CPU goes: wrk, the upstream, Redis and the proxy share the
	// machine, so what one proxy makes the others do (headers to parse,
	// segments to carry) costs throughput as much as its own work does.
	fmt.Printf("\nCPU per request served (medians over rounds): on plain Caddy's runs | on %s's\n\n", kg.name)
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.ReplaceAll("configuration\tconns\tproxy\tupstream\twrk\tredis\tother\tmachine\tstolen\t|\tkeygate\tupstream\twrk\tredis\tother\tmachine\tstolen\tΔmachine\t", "keygate", kg.name))
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%s|\t%s%s\t\n", r.c.name, r.c.conns, fmtCPUUse(r.plainCPU), fmtCPUUse(r.kgCPU), fmtMicros(r.kgCPU.machine-r.plainCPU.machine))
	}
	tw.Flush()
	fmt.Println("\nupstream = this benchmark's own process, which serves it; other = the machine's busy CPU time")
	fmt.Println("(/proc/stat: user, system, irq, softirq) that no process listed was charged: mostly the kernel's")
	fmt.Println("loopback traffic, and anything else running; stolen = the time the hypervisor took the CPUs")
	fmt.Println("away. Processes are charged for time stolen while they ran (other then comes out below zero):")
	fmt.Println("read these columns from runs with little stolen time. In a closed loop on a busy machine the")
	fmt.Println("machine column sets the throughput: where keygate's runs spend more of it than plain Caddy's")
	fmt.Println("says where its gap is.")

	// Where the latency's tail comes from when CPU time does not say: a
	// thread ready to run waits for a CPU, and so does the request it has.
	fmt.Printf("\nScheduling per request served (medians over rounds): on plain Caddy's runs | on %s's\n\n", kg.name)
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.ReplaceAll("configuration\tconns\tproxy run-queue wait\tswitches: blocked\tpreempted\tupstream run-queue wait\t|\tkeygate run-queue wait\tswitches: blocked\tpreempted\tupstream run-queue wait\t", "keygate", kg.name))
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%s%s|\t%s%s\n", r.c.name, r.c.conns, fmtSchedUse(r.plainSched), fmtMicros(r.plainUpSched.runQueueWait)+"\t",
			fmtSchedUse(r.kgSched), fmtMicros(r.kgUpSched.runQueueWait)+"\t")
	}
	tw.Flush()
	fmt.Println("\nrun-queue wait = time the process's threads were ready to run but waited for a CPU (each")
	fmt.Println("thread's /proc schedstat), per request served; a request its thread holds waits with it, so")
	fmt.Println("this lengthens latency, its tail most, without showing in CPU time. switches = the threads'")
	fmt.Println("context switches per request: blocked (parked, or waiting for I/O) and preempted.")
	return nil
}

func sumSockErrors[T any](rows []T, f func(T) int64) int64 {
	var n int64
	for _, r := range rows {
		n += f(r)
	}
	return n
}

func fmtRatios(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.FormatFloat(x, 'f', 3, 64)
	}
	return strings.Join(s, " ")
}

func fmtMicros(d time.Duration) string {
	return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
}

func fmtDur(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/1e6, 'f', 3, 64) + "ms"
}

func numCPU() int {
	out, err := exec.Command("nproc").Output()
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// cpuProfile saves proxy p's CPU profile over most of a run, then its
// allocs profile, from Caddy's admin /debug/pprof/.
func cpuProfile(ctx context.Context, p *proxy, c config, d time.Duration) error {
	base := filepath.Join(*flagPprof, strings.ReplaceAll(c.name, "/", "-")+"-c"+strconv.Itoa(c.conns)+"-"+p.name)
	secs := max(1, int(d.Seconds())-1)
	time.Sleep(500 * time.Millisecond)
	if err := fetch(ctx, "http://"+p.admin+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), base+".cpu.pprof"); err != nil {
		return err
	}
	return fetch(ctx, "http://"+p.admin+"/debug/pprof/allocs", base+".allocs.pprof")
}

func fetch(ctx context.Context, url, path string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
