package keygate

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/internal/metricstest"
	"github.com/keygate/keygate/internal/redistest"
)

func TestPlaceholders(t *testing.T) {
	g := startRedisGateway(t, "", `
	handle /keyed {
		keygate
		respond "id={keygate.key.id} user={http.auth.user.id} name={keygate.key.name} roles={keygate.key.roles} owner={keygate.key.owner} anon={keygate.anonymous}"
	}
	handle {
		keygate {
			anonymous 10 1m
		}
		respond "anon={keygate.anonymous} id={keygate.key.id} user={http.auth.user.id}"
	}`)
	k := generate(t, "--name", "placeholder", "--roles", "a,b", "--owner", "team-x")
	r := g.get("/keyed", bearer(k.Key)...)
	want := fmt.Sprintf("id=%s user=%s name=placeholder roles=a,b owner=team-x anon=false", k.ID, k.ID)
	if string(r.body) != want {
		t.Fatalf("body = %q, want %q", r.body, want)
	}
	if r := g.get("/other"); string(r.body) != "anon=true id= user=" {
		t.Fatalf("anonymous body = %q", r.body)
	}
}

// A handler after keygate that rewrites the identity headers in place
// (request_header's replace does) changes its own request's, never those
// of the requests after it.
func TestLaterHandlersRewriteOnlyTheirOwnRequestsIdentity(t *testing.T) {
	g := startRedisGateway(t, "", `
	handle /keyed {
		keygate
		request_header X-Keygate-Roles a aa
		reverse_proxy {upstream}
	}
	handle {
		keygate {
			anonymous 10 1m
		}
		request_header X-Keygate-Anonymous true truetrue
		reverse_proxy {upstream}
	}`)
	k := generate(t, "--name", "rewritten", "--roles", "a,b")
	for i := range 3 {
		if r := g.get("/keyed", bearer(k.Key)...); r.upstreamSaw.Get("X-Keygate-Roles") != "aa,b" {
			t.Fatalf("keyed request %d: status %d, upstream saw roles %q, want \"aa,b\"", i+1, r.status, r.upstreamSaw.Get("X-Keygate-Roles"))
		}
		if r := g.get("/other"); r.upstreamSaw.Get("X-Keygate-Anonymous") != "truetrue" {
			t.Fatalf("anonymous request %d: status %d, upstream saw %q, want \"truetrue\"", i+1, r.status, r.upstreamSaw.Get("X-Keygate-Anonymous"))
		}
	}
}

func TestMetricsInCaddyRegistry(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	k := generate(t, "--name", "metered", "--roles", "upload")
	g.get("/api/x", bearer(k.Key)...)
	g.get("/api/x")
	resp, err := client.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`keygate_decisions_total{outcome="allowed"} 1`,
		`keygate_decisions_total{outcome="missing_key"} 1`,
		`keygate_store_duration_seconds_count{op="check"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(string(body), k.ID) || strings.Contains(string(body), "metered") {
		t.Error("/metrics has a per-key label")
	}
}

// On the embedded store a store call runs in process: counted in the
// decisions, not timed (timing it cost 8 % of the handler's CPU,
// BenchmarkHandlerEmbedded's profile).
func TestEmbeddedStoreCallsAreNotTimed(t *testing.T) {
	g := startGateway(t, "", protectedSite)
	k := generate(t, "--name", "untimed", "--roles", "upload")
	if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
		t.Fatalf("status %d", r.status)
	}
	if got := metricstest.Counter(t, adminAddr, `keygate_decisions_total{outcome="allowed"}`); got != 1 {
		t.Fatalf("allowed decisions %v, want 1", got)
	}
	if got := metricstest.Counter(t, adminAddr, `keygate_store_duration_seconds_count{op="check"}`); got != 0 {
		t.Fatalf("embedded store calls timed: count %v, want 0", got)
	}
}

// A reload keeps the store (and its connection pool and key cache): keys
// keep working without a pause.
func TestReloadKeepsServing(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	k := generate(t, "--name", "survivor", "--roles", "upload")
	if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
		t.Fatalf("before reload: %d", r.status)
	}
	reloaded := startGatewayOn(t, g.redis, strings.Replace(protectedSite, "rate_limit 100 10m", "rate_limit 2 10m", 1))
	if r := reloaded.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK || r.header.Get("X-RateLimit-Limit") != "2" {
		t.Fatalf("after reload: %d, limit %q", r.status, r.header.Get("X-RateLimit-Limit"))
	}
	if out := mustCLI(t, "list"); !strings.Contains(out, "survivor") {
		t.Fatalf("keys after reload:\n%s", out)
	}
}

// A reload that lets go of a store does not wait for it to answer: with
// leases, the store's epoch is polled in the background, and a poll that a
// hung Redis would hold for the whole store timeout (10 s here) ends when
// the store's connections are closed, first. caddytest gives a load 5 s,
// so a reload that waited fails here.
func TestReloadDoesNotWaitForAHungStore(t *testing.T) {
	hung := redistest.Start(t)
	startGatewayOn(t, hung, anonymousLeasing, "timeout 10s")
	hung.Pause()
	t.Cleanup(hung.Resume)
	time.Sleep(2 * epochPollEvery) // a poll is on its way to the hung store
	g := startRedisGateway(t, "", anonymousLeasing)
	if r := g.get("/"); r.status != http.StatusOK {
		t.Fatalf("after the reload: %d %s", r.status, r.body)
	}
}

// The in-process Caddy writes its autosaved config, its storage's locks
// and the embedded store's keys under the test's own directory, never
// under $HOME.
func TestNothingWrittenUnderHome(t *testing.T) {
	startGateway(t, "", protectedSite)
	// The embedded store outlives the test (one per test binary): a name
	// of this run's own, so that -count=N runs it again.
	generate(t, "--name", fmt.Sprintf("home-%d", time.Now().UnixNano()))
	for what, path := range map[string]string{
		"autosave":   caddy.ConfigAutosavePath,
		"storage":    caddy.DefaultStorage.Path,
		"embedded":   filepath.Join(caddy.AppDataDir(), "keygate", "keys.json"),
		"config dir": caddy.AppConfigDir(),
	} {
		if !strings.HasPrefix(path, testHome+string(filepath.Separator)) {
			t.Errorf("%s at %s, outside the test's %s", what, path, testHome)
		}
	}
	if _, err := os.Stat(caddy.ConfigAutosavePath); err != nil {
		t.Errorf("no autosave where the test put it: %v", err)
	}
}
