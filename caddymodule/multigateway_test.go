package keygate

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/freeport"
	"github.com/keygate/keygate/internal/gobuild"
)

// Tests that need a second, independent gateway on the same Redis run the
// real keygate binary next to the in-process Caddy.

// builds holds the keygate binary, built once per test run; TestMain
// removes it.
var builds gobuild.Builder

func keygateBinary(t *testing.T) string {
	t.Helper()
	return builds.Binary(t, "../cmd/keygate")
}

// startBinaryGateway runs the keygate binary with the given Caddyfile site
// body on the Redis of g, and returns its base URL.
func startBinaryGateway(t *testing.T, g *gateway, siteBody string) *gateway {
	t.Helper()
	dir := t.TempDir()
	up := newUpstream(t)
	port, adminPort := freeport.Get(t), freeport.Get(t)
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	skip_install_trust
	persist_config off
	keygate {
		redis %s
	}
}
http://127.0.0.1:%d {
	%s
	handle_errors {
		keygate_errors
	}
}
`, adminPort, g.redis.URL(), port, replaceUpstream(siteBody, up.addr()))
	runKeygate(t, dir, caddyfile)
	second := &gateway{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), redis: g.redis}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(second.base + "/")
		if err == nil {
			resp.Body.Close()
			return second
		}
		if time.Now().After(deadline) {
			t.Fatalf("second gateway did not start: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runKeygate starts the keygate binary on caddyfile, with its home, config
// and data in dir and its output in dir/keygate.log, shown if the test
// fails. stop interrupts it and waits (killing it after 10s); it also runs
// when the test ends, and more than once is harmless.
func runKeygate(t *testing.T, dir, caddyfile string) (stop func()) {
	t.Helper()
	bin := keygateBinary(t)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "keygate.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir+"/config", "XDG_DATA_HOME="+dir+"/data")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// killed with the test binary, should it die without its cleanups
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			killer := time.AfterFunc(10*time.Second, func() { _ = cmd.Process.Kill() })
			_ = cmd.Wait()
			killer.Stop()
			logFile.Close()
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("%s:\n%s", logPath, log)
		}
	})
	return stop
}

func replaceUpstream(site, addr string) string { return strings.ReplaceAll(site, "{upstream}", addr) }

func TestRevocationAcrossGateways(t *testing.T) {
	a := startRedisGateway(t, "", protectedSite)
	b := startBinaryGateway(t, a, protectedSite)
	k := generate(t, "--name", "shared", "--roles", "upload")
	for _, g := range []*gateway{a, b} {
		if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
			t.Fatalf("%s before revocation: %d %s", g.base, r.status, r.body)
		}
	}
	mustCLI(t, "disable", "shared")
	for _, g := range []*gateway{a, b} {
		wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusUnauthorized, "Invalid API key")
	}
	mustCLI(t, "enable", "shared")
	var rotated keyView
	mustJSON(t, mustCLI(t, "rotate", "shared", "--json"), &rotated)
	for _, g := range []*gateway{a, b} {
		wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusUnauthorized, "Invalid API key")
		if r := g.get("/api/x", bearer(rotated.Key)...); r.status != http.StatusOK {
			t.Fatalf("%s rotated key: %d", g.base, r.status)
		}
	}
}

func TestLimitsAreSharedAcrossGateways(t *testing.T) {
	for _, tc := range []struct {
		algorithm string
		lease     int
		exact     bool
	}{
		{"sliding_log", 0, true},
		{"sliding_window", 0, false},
		// Leases count requests before they are admitted: never more than
		// the limit, and here, where demand outlasts every lease, no fewer
		// than the limit less what two gateways can hold unused.
		{"sliding_log", 16, false},
		{"sliding_window", 16, false},
	} {
		t.Run(fmt.Sprintf("%s/lease%d", tc.algorithm, tc.lease), func(t *testing.T) {
			site := fmt.Sprintf(`
	keygate {
		rate_limit 50 1h
		algorithm %s
		lease %d
	}
	reverse_proxy {upstream}`, tc.algorithm, tc.lease)
			a := startRedisGateway(t, "", site)
			b := startBinaryGateway(t, a, site)
			k := generate(t, "--name", "crowd")
			var admitted, refused atomic.Int64
			var wg sync.WaitGroup
			for worker := range 8 {
				g := []*gateway{a, b}[worker%2]
				wg.Go(func() {
					for range 25 {
						req, _ := http.NewRequest(http.MethodGet, g.base+"/", nil)
						req.Header.Set("X-API-Key", k.Key)
						resp, err := client.Do(req)
						if err != nil {
							t.Error(err)
							return
						}
						resp.Body.Close()
						switch resp.StatusCode {
						case http.StatusOK:
							admitted.Add(1)
						case http.StatusTooManyRequests:
							refused.Add(1)
						default:
							t.Errorf("status %d", resp.StatusCode)
						}
					}
				})
			}
			wg.Wait()
			if tc.exact && admitted.Load() != 50 {
				t.Fatalf("%s admitted %d of 200 across two gateways, want exactly 50", tc.algorithm, admitted.Load())
			}
			if admitted.Load() > 50 || admitted.Load() < int64(50-2*tc.lease) || admitted.Load()+refused.Load() != 200 {
				t.Fatalf("%s admitted %d, refused %d; limit 50", tc.algorithm, admitted.Load(), refused.Load())
			}
			t.Logf("admitted %d of 200", admitted.Load())
		})
	}
}

// With no redis configured, keys live in Caddy's data directory and survive
// a restart of the gateway.
func TestEmbeddedStoreSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	up := newUpstream(t)
	port, adminPort := freeport.Get(t), freeport.Get(t)
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	persist_config off
}
http://127.0.0.1:%d {
	keygate {
		rate_limit 2 1h
	}
	reverse_proxy %s
	handle_errors {
		keygate_errors
	}
}
`, adminPort, port, up.addr())
	g := &gateway{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	start := func() func() {
		stop := runKeygate(t, dir, caddyfile)
		waitFor(t, func() bool {
			_, err := cli(t, "list", "--address", admin)
			return err == nil
		})
		return stop
	}

	stop := start()
	out, err := cli(t, "generate", "--name", "durable", "--json", "--address", admin)
	if err != nil {
		t.Fatal(err, out)
	}
	var k keyView
	mustJSON(t, out, &k)
	if r := g.get("/", bearer(k.Key)...); r.status != http.StatusOK {
		t.Fatalf("before restart: %d %s", r.status, r.body)
	}
	info, err := os.Stat(filepath.Join(dir, "data", "caddy", "keygate", "keys.json"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("embedded key file: %v, %v", info, err)
	}
	stop()

	start()
	if r := g.get("/", bearer(k.Key)...); r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Name") != "durable" {
		t.Fatalf("after restart: %d %s", r.status, r.body)
	}
	if out, _ := cli(t, "list", "--address", admin); !strings.Contains(out, "durable") {
		t.Fatalf("list after restart:\n%s", out)
	}

	// Beside it, on the same data directory: validating the config works
	// (it provisions the store, writing nothing); a second gateway does
	// not start, rather than rewrite the file from what it holds.
	keygate := func(args ...string) (string, error) {
		// a second gateway that did start would run until killed
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, keygateBinary(t), args...)
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir+"/config", "XDG_DATA_HOME="+dir+"/data")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	path := filepath.Join(dir, "Caddyfile")
	if out, err := keygate("validate", "--config", path, "--adapter", "caddyfile"); err != nil {
		t.Fatalf("keygate validate beside the running gateway: %v\n%s", err, out)
	}
	second := strings.NewReplacer(strconv.Itoa(adminPort), strconv.Itoa(freeport.Get(t)), strconv.Itoa(port), strconv.Itoa(freeport.Get(t))).Replace(caddyfile)
	secondPath := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(secondPath, []byte(second), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := keygate("run", "--config", secondPath, "--adapter", "caddyfile"); err == nil || !strings.Contains(out, "in use by another keygate (process ") {
		t.Fatalf("a second gateway on the same data directory: %v\n%s", err, out)
	}
}
