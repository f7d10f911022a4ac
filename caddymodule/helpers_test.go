package keygate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/spf13/cobra"

	"github.com/keygate/keygate/internal/freeport"
	"github.com/keygate/keygate/internal/redistest"
)

// The tests in this package run one real Caddy in-process (caddytest, admin
// on localhost:2999), so they must not use t.Parallel.

func TestMain(m *testing.M) {
	// Keep Caddy's config and data (autosave, embedded store) out of $HOME.
	dir, err := os.MkdirTemp("", "keygate-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", dir+"/config")
	os.Setenv("XDG_DATA_HOME", dir+"/data")
	// Caddy works out its autosave file and default storage (locks) when
	// its package loads, before this runs: point them here too.
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	testHome = dir
	code := m.Run()
	os.RemoveAll(dir)
	builds.Remove()
	os.Exit(code)
}

const adminAddr = "localhost:2999"

// testHome holds what the in-process Caddy writes (see TestMain).
var testHome string

// upstream is a backend that answers with the headers it received, and
// after them the trailers, each under "trailer:" and its name.
type upstream struct {
	*httptest.Server
}

func newUpstream(t *testing.T) *upstream {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // the trailers come after it
		saw := r.Header.Clone()
		for name, values := range r.Trailer {
			saw["trailer:"+name] = values
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(saw)
	}))
	t.Cleanup(srv.Close)
	return &upstream{srv}
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

// gateway is a running keygate in front of an upstream.
type gateway struct {
	t     *testing.T
	base  string
	redis *redistest.Server
}

// startGateway loads a config into the in-process Caddy. siteBody is the
// body of the site block; {upstream} in it is replaced.
func startGateway(t *testing.T, globalKeygate, siteBody string) *gateway {
	t.Helper()
	up := newUpstream(t)
	port := freeport.Get(t)
	cfg := fmt.Sprintf(`{
	admin %s
	auto_https off
	skip_install_trust
	persist_config off
	%s
}
http://127.0.0.1:%d {
	%s
	handle_errors {
		keygate_errors
	}
}
`, adminAddr, globalKeygate, port, replaceUpstream(siteBody, up.addr()))
	// caddytest skips a test whose prerequisites fail (its certificate
	// files not found, as under -trimpath; its admin endpoint not up in
	// 10 s): that would pass the package with its gateway tests unrun
	t.Cleanup(func() {
		if t.Skipped() && !testing.Short() {
			t.Error("caddytest skipped the test: its prerequisites failed (see above)")
		}
	})
	tester := caddytest.NewTester(t)
	tester.InitServer(cfg, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	// The next test's config stops this server, which waits for open
	// connections; one the client dialed for a request that then found
	// an idle connection holds that for 5 s (net/http counts a new
	// connection as idle only after 5 s), and the load times out.
	t.Cleanup(client.CloseIdleConnections)
	return &gateway{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
}

// startRedisGateway starts a Redis and a gateway using it.
func startRedisGateway(t *testing.T, globalExtra, siteBody string) *gateway {
	t.Helper()
	return startGatewayOn(t, redistest.Start(t), siteBody, globalExtra)
}

// startGatewayOn loads a gateway config that uses an existing Redis.
func startGatewayOn(t *testing.T, r *redistest.Server, siteBody string, globalExtra ...string) *gateway {
	t.Helper()
	extra := strings.Join(globalExtra, "\n\t\t")
	if !strings.Contains(extra, "timeout ") { // an option is given once
		extra += "\n\t\ttimeout 300ms"
	}
	g := startGateway(t, fmt.Sprintf("keygate {\n\t\tredis %s\n\t\t%s\n\t}", r.URL(), extra), siteBody)
	g.redis = r
	return g
}

// response is what a test request got back.
type response struct {
	status  int
	header  http.Header
	body    []byte
	problem map[string]any
	// upstreamSaw holds the request headers the upstream received (when
	// the request got through).
	upstreamSaw http.Header
}

var client = &http.Client{Timeout: 10 * time.Second}

// do sends a request; headers alternate name, value.
func (g *gateway) do(method, path string, headers ...string) response {
	g.t.Helper()
	req, err := http.NewRequest(method, g.base+path, nil)
	if err != nil {
		g.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, body: body}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		if err := json.Unmarshal(body, &r.problem); err != nil {
			g.t.Fatalf("problem body %q: %v", body, err)
		}
	} else if resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(body, &r.upstreamSaw); err != nil {
			g.t.Fatalf("upstream body %q: %v", body, err)
		}
	}
	return r
}

func (g *gateway) get(path string, headers ...string) response {
	g.t.Helper()
	return g.do(http.MethodGet, path, headers...)
}

// cli runs `keygate api-key <args>` against the in-process admin API and
// returns what it printed, stdout then stderr.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	stdout, stderr, err := cliStreams(t, args...)
	return stdout + stderr, err
}

// cliStreams runs `keygate api-key <args>` as cli does and returns its
// stdout and stderr apart.
func cliStreams(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	// as in the binary: api-key below a root
	root := &cobra.Command{Use: "keygate", SilenceErrors: true, SilenceUsage: true}
	apiKey := &cobra.Command{Use: "api-key", SilenceErrors: true, SilenceUsage: true}
	apiKeyParent(apiKey)
	root.AddCommand(apiKey)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	if !slices.Contains(args, "--address") {
		args = append(args, "--address", adminAddr)
	}
	root.SetArgs(append([]string{"api-key"}, args...))
	err = root.Execute()
	return out.String(), errOut.String(), err
}

// mustCLI runs the CLI and fails the test on error.
func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cli(t, args...)
	if err != nil {
		t.Fatalf("keygate api-key %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// generate creates a key through the CLI and returns its view.
func generate(t *testing.T, args ...string) keyView {
	t.Helper()
	out := mustCLI(t, append([]string{"generate", "--json"}, args...)...)
	var v keyView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("generate --json printed %q: %v", out, err)
	}
	if v.Key == "" || v.ID == "" || v.Name == "" {
		t.Fatalf("generate --json lacks key, id or name: %s", out)
	}
	return v
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
}

func bearer(key string) []string { return []string{"Authorization", "Bearer " + key} }

// wantProblem checks a refusal: status, problem+json body with the given
// error member, and optionally a WWW-Authenticate header.
func wantProblem(t *testing.T, r response, status int, errMsg string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (body %s)", r.status, status, r.body)
	}
	if r.problem == nil {
		t.Fatalf("body is not problem+json: %q (Content-Type %q)", r.body, r.header.Get("Content-Type"))
	}
	if r.problem["error"] != errMsg {
		t.Fatalf("error member = %q, want %q", r.problem["error"], errMsg)
	}
	if int(r.problem["status"].(float64)) != status || r.problem["title"] == "" || r.problem["type"] == "" {
		t.Fatalf("problem body incomplete: %s", r.body)
	}
}
