package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/keygate/keygate/internal/redistest"
)

func envMap(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(nil, envMap(map[string]string{"KEYGATE_UPSTREAM_SECRET": "s"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.listen != "127.0.0.1:8081" || c.dataDir != "./data" || c.redis.url != "" || c.secret != "s" ||
		c.maxUpload != 20<<20 || c.maxSecret != 1<<20 || c.insecure {
		t.Fatalf("%+v", c)
	}
}

func TestParseConfigEnvAndFlags(t *testing.T) {
	env := envMap(map[string]string{
		"BACKEND_LISTEN": "0.0.0.0:9000", "BACKEND_DATA_DIR": "/var/lib/kg", "BACKEND_REDIS_URL": "redis://r:6379/1",
		"BACKEND_MAX_UPLOAD": "5MiB", "BACKEND_MAX_SECRET": "64KiB", "KEYGATE_UPSTREAM_SECRET": "from-env",
	})
	c, err := parseConfig(nil, env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.listen != "0.0.0.0:9000" || c.dataDir != "/var/lib/kg" || c.redis.url != "redis://r:6379/1" ||
		c.maxUpload != 5<<20 || c.maxSecret != 64<<10 || c.secret != "from-env" {
		t.Fatalf("from env: %+v", c)
	}
	// Flags win over the environment.
	c, err = parseConfig([]string{"-listen", "127.0.0.1:1", "-data", "d", "-redis", "", "-max-upload", "1048576",
		"-max-secret", "2M", "-upstream-secret", "from-flag"}, env, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.listen != "127.0.0.1:1" || c.dataDir != "d" || c.redis.url != "" || c.maxUpload != 1<<20 ||
		c.maxSecret != 2<<20 || c.secret != "from-flag" {
		t.Fatalf("flags over env: %+v", c)
	}
}

func TestParseConfigRefusals(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "no upstream secret"},
		{[]string{"-upstream-secret", "s", "-insecure-no-secret"}, nil, "pick one"},
		{[]string{"-max-upload", "lots"}, map[string]string{"KEYGATE_UPSTREAM_SECRET": "s"}, "invalid size"},
		{[]string{"-max-secret", "0"}, map[string]string{"KEYGATE_UPSTREAM_SECRET": "s"}, "invalid size"},
		{nil, map[string]string{"KEYGATE_UPSTREAM_SECRET": "s", "BACKEND_MAX_UPLOAD": "-1"}, "BACKEND_MAX_UPLOAD"},
		{[]string{"extra"}, map[string]string{"KEYGATE_UPSTREAM_SECRET": "s"}, "unexpected arguments"},
	} {
		_, err := parseConfig(c.args, envMap(c.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%v %v: %v, want an error containing %q", c.args, c.env, err, c.want)
		}
	}
	if c, err := parseConfig([]string{"-insecure-no-secret"}, envMap(nil), io.Discard); err != nil || !c.insecure {
		t.Fatalf("insecure: %+v, %v", c, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1": 1, "20MiB": 20 << 20, "20mb": 20 << 20, "512KiB": 512 << 10, "1G": 1 << 30, "7 B": 7} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Fatalf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5MiB", "99999999999GiB"} {
		if _, err := parseSize(in); err == nil {
			t.Fatalf("%q accepted", in)
		}
	}
}

// backendProc is run() in a goroutine, as main would run it.
type backendProc struct {
	base   string
	cancel context.CancelFunc
	done   chan error
}

func startBackend(t *testing.T, args ...string) *backendProc {
	t.Helper()
	return startBackendEnv(t, nil, args...)
}

// startBackendEnv is startBackend with more environment variables.
func startBackendEnv(t *testing.T, environ map[string]string, args ...string) *backendProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	p := &backendProc{cancel: cancel, done: make(chan error, 1)}
	vars := map[string]string{"KEYGATE_UPSTREAM_SECRET": "shh"}
	maps.Copy(vars, environ)
	env := envMap(vars)
	go func() {
		p.done <- run(ctx, append([]string{"-listen", "127.0.0.1:0"}, args...), env, io.Discard, ready)
	}()
	select {
	case addr := <-ready:
		p.base = "http://" + addr.String()
	case err := <-p.done:
		t.Fatalf("backend did not start: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("backend did not start within 15s")
	}
	t.Cleanup(p.stop)
	return p
}

// stop is what SIGINT does: cancel the context and wait for a clean return.
func (p *backendProc) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	p.cancel = nil
	if err := <-p.done; err != nil {
		panic("backend returned " + err.Error())
	}
}

// callRetrying is call, sent again while the answer is 503 (Storage
// unavailable, worth retrying) for at most 10 s.
func callRetrying(t *testing.T, method, url, body, secret string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, answer := call(t, method, url, body, secret)
		if code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return code, answer
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func call(t *testing.T, method, url, body, secret string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if secret != "" {
		req.Header.Set("X-Keygate-Upstream-Secret", secret)
	}
	req.Header.Set("X-Keygate-Key-Id", "k1")
	c := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRunRestartKeepsLinks: on the embedded store a link made before a
// restart still redirects after it, and secrets and counters carry on.
func TestRunRestartKeepsLinks(t *testing.T) {
	data := t.TempDir()
	p := startBackend(t, "-data", data)
	if code, _ := call(t, "GET", p.base+"/healthz", "", ""); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	if code, _ := call(t, "POST", p.base+"/api/shortlinks", `{"url":"https://example.com","slug":"persist"}`, ""); code != 403 {
		t.Fatalf("without the secret: %d, want 403", code)
	}
	if code, body := call(t, "POST", p.base+"/api/shortlinks", `{"url":"https://example.com","slug":"persist"}`, "shh"); code != 200 {
		t.Fatalf("create: %d %s", code, body)
	}
	p.stop()

	p = startBackend(t, "-data", data)
	if code, _ := call(t, "GET", p.base+"/persist", "", "shh"); code != 302 {
		t.Fatalf("after restart: %d, want 302", code)
	}
	if code, body := call(t, "POST", p.base+"/api/shortlinks", `{"url":"https://example.com","slug":"persist"}`, "shh"); code != 409 {
		t.Fatalf("slug after restart: %d %s, want 409", code, body)
	}
}

func TestRunWithRedis(t *testing.T) {
	srv := redistest.Start(t)
	p := startBackend(t, "-data", t.TempDir(), "-redis", srv.URL())
	if code, body := call(t, "POST", p.base+"/api/v1/secrets", `{"encryptedBlob":"...","iv":"...","expiryType":"view_once"}`, "shh"); code != 201 {
		t.Fatalf("create secret: %d %s", code, body)
	}
}

// The backend on a real three-node Redis Cluster: its scripts' keys share a
// slot, so links and view_once secrets work as on one server.
func TestRunOnRedisCluster(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	p := startBackend(t, "-data", t.TempDir(), "-redis", cluster.URL(), "-redis-cluster")
	servesLinksAndSecrets(t, p, "clustered")
}

// Behind Redis Sentinel (configured from the environment), the backend
// follows a failover: what it wrote before is served from the promoted
// replica.
func TestRunBehindRedisSentinel(t *testing.T) {
	primary, replica := redistest.Start(t), redistest.Start(t)
	replica.Follow(t, primary)
	sentinel := redistest.StartSentinel(t, primary, "kgb", 1)
	p := startBackendEnv(t, map[string]string{"BACKEND_REDIS_URL": sentinel.URL(), "BACKEND_REDIS_SENTINEL": "kgb"},
		"-data", t.TempDir())
	if code, body := call(t, "POST", p.base+"/api/shortlinks", `{"url":"https://example.com","slug":"before"}`, "shh"); code != 200 {
		t.Fatalf("create: %d %s", code, body)
	}
	replica.CatchUp(t, primary)
	sentinel.Failover(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := call(t, "GET", p.base+"/before", "", "shh")
		if code == 302 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the failover: %d %s, want 302", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	servesLinksAndSecrets(t, p, "after")
}

// servesLinksAndSecrets makes a link and a view_once secret and reads
// them back through p, retrying 503s as a client would: right after a
// failover a request may still reach the demoted primary.
func servesLinksAndSecrets(t *testing.T, p *backendProc, slug string) {
	t.Helper()
	if code, body := callRetrying(t, "POST", p.base+"/api/shortlinks", `{"url":"https://example.com","slug":"`+slug+`"}`, "shh"); code != 200 {
		t.Fatalf("create link: %d %s", code, body)
	}
	if code, body := callRetrying(t, "GET", p.base+"/"+slug, "", "shh"); code != 302 {
		t.Fatalf("visit: %d %s, want 302", code, body)
	}
	code, body := callRetrying(t, "POST", p.base+"/api/v1/secrets", `{"encryptedBlob":"...","iv":"...","expiryType":"view_once"}`, "shh")
	if code != 201 {
		t.Fatalf("create secret: %d %s", code, body)
	}
	var created struct{ LinkID string }
	if err := json.Unmarshal([]byte(body), &created); err != nil || created.LinkID == "" {
		t.Fatalf("create secret: %s, %v", body, err)
	}
	for _, want := range []int{200, 410} {
		if code, body := callRetrying(t, "GET", p.base+"/api/v1/secrets/"+created.LinkID, "", "shh"); code != want {
			t.Fatalf("read secret: %d %s, want %d", code, body, want)
		}
	}
}

// The Redis flags refuse what cannot work, saying why.
func TestRunRefusesRedisFlagsThatCannotWork(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"-redis-cluster"}, nil, "need -redis"},
		{[]string{"-redis-sentinel", "m"}, nil, "need -redis"},
		{[]string{"-redis", "redis://127.0.0.1:1", "-redis-cluster", "-redis-sentinel", "m"}, nil, "exclude each other"},
		{[]string{"-redis", "redis://127.0.0.1:1?addr=127.0.0.1:2"}, nil, "add -redis-cluster"},
		{nil, map[string]string{"BACKEND_REDIS_CLUSTER": "yes please"}, "BACKEND_REDIS_CLUSTER"},
	} {
		env := map[string]string{"KEYGATE_UPSTREAM_SECRET": "s"}
		maps.Copy(env, c.env)
		err := run(context.Background(), append([]string{"-data", t.TempDir()}, c.args...), envMap(env), io.Discard, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %v: %v, want an error saying %q", c.args, c.env, err, c.want)
		}
	}
}

func TestRunFailsClearly(t *testing.T) {
	err := run(context.Background(), []string{"-data", t.TempDir(), "-redis", "redis://127.0.0.1:1/0"},
		envMap(map[string]string{"KEYGATE_UPSTREAM_SECRET": "s"}), io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "redisstore") {
		t.Fatalf("unreachable redis: %v", err)
	}
	err = run(context.Background(), nil, envMap(nil), io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "KEYGATE_UPSTREAM_SECRET") {
		t.Fatalf("no secret: %v", err)
	}
}

func TestRunInsecure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	var logs strings.Builder
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-data", t.TempDir(), "-insecure-no-secret"}, envMap(nil), &lockedWriter{w: &logs}, ready)
	}()
	addr := <-ready
	if code, body := call(t, "POST", "http://"+addr.String()+"/api/shorten", `{"url":"https://example.com"}`, ""); code != 201 {
		t.Fatalf("insecure: %d %s", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "WITHOUT the upstream secret") {
		t.Fatalf("no warning logged:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// The backend keeps an idle connection longer than the gateway does
// (Caddy's reverse_proxy, by default): else it may close one just as the
// gateway sends a request on it, and a POST is not sent again (a 502).
func TestServerOutlastsTheGatewaysIdleConnections(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	gateway, err := new(reverseproxy.HTTPTransport).NewTransport(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if srv := newServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler)); srv.IdleTimeout <= gateway.IdleConnTimeout {
		t.Fatalf("the backend closes idle connections after %v, the gateway after %v", srv.IdleTimeout, gateway.IdleConnTimeout)
	}
}

// A stop waits for the requests being served for the grace period, then
// cuts off those still running (here an upload whose body never comes),
// closes the store once they returned, and returns cleanly.
func TestStopCutsOffRequestsAfterTheGrace(t *testing.T) {
	defer func(g time.Duration) { shutdownGrace = g }(shutdownGrace)
	shutdownGrace = 300 * time.Millisecond
	p := startBackend(t, "-data", t.TempDir())
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = conn.Write([]byte("POST /api/external/upload HTTP/1.1\r\nHost: x\r\nX-Keygate-Upstream-Secret: shh\r\nX-Keygate-Key-Id: k1\r\n" +
		"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the handler is reading the body
	p.cancel()
	p.cancel = nil
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("stopping with a request running: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the backend did not stop")
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("the upload's connection: %v, want it closed", err)
	}
}
