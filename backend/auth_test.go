package backend_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keygate/keygate/backend"
)

// Every endpoint refuses a request that did not come through the gateway,
// whatever identity headers it carries.
func TestRefusesRequestsWithoutUpstreamSecret(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	png := pngBytes(t)
	upload, ctype := multipartBody(t, "image", "a.png", png)
	cases := []struct {
		method, path string
		body         []byte
		ctype        string
	}{
		{"POST", "/api/external/upload", upload, ctype},
		{"GET", "/i/AAAAAAAAAAAAAAAAAAAA.png", nil, ""},
		{"GET", "/api/user/sharex-config?baseUrl=https://x.example&apiKey=k", nil, ""},
		{"POST", "/api/shortlinks", []byte(`{"url":"https://example.com","slug":"myslug"}`), "application/json"},
		{"POST", "/api/shorten", []byte(`{"url":"https://example.com"}`), "application/json"},
		{"GET", "/myslug", nil, ""},
		{"POST", "/api/v1/secrets", []byte(`{"encryptedBlob":"...","iv":"...","expiryType":"view_once"}`), "application/json"},
		{"GET", "/api/v1/secrets/A1b2C3d4E5f6", nil, ""},
		{"POST", "/api/v1/secrets/A1b2C3d4E5f6/report", nil, ""},
		{"GET", "/", nil, ""},
		{"DELETE", "/nothing/here", nil, ""},
	}
	secrets := map[string]reqOpt{
		"missing": noSecret,
		"wrong":   header("X-Keygate-Upstream-Secret", "guess"),
		"prefix":  header("X-Keygate-Upstream-Secret", testSecret[:len(testSecret)-1]),
		"longer":  header("X-Keygate-Upstream-Secret", testSecret+"x"),
		"empty":   header("X-Keygate-Upstream-Secret", ""),
	}
	for _, c := range cases {
		for name, opt := range secrets {
			resp, body := e.do(c.method, c.path, c.body, c.ctype, opt, asKey("admin-key", "admin", "root"))
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("%s %s with %s secret: status %d, want 403", c.method, c.path, name, resp.StatusCode)
			}
			wantProblem(t, resp, body, http.StatusForbidden, "Forbidden")
		}
	}
	// Nothing was created by the refused requests.
	resp, body := e.get("/myslug")
	wantProblem(t, resp, body, http.StatusNotFound, "Link not found")
}

// /healthz is the one endpoint without the secret: container health checks
// call the backend directly, and it tells nothing.
func TestHealthz(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		resp, body := e.get("/healthz", noSecret)
		if resp.StatusCode != http.StatusOK || decode(t, body)["status"] != "ok" {
			t.Fatalf("healthz: %d %s", resp.StatusCode, body)
		}
		resp, body = e.do("POST", "/healthz", nil, "", noSecret)
		wantProblem(t, resp, body, http.StatusMethodNotAllowed, "Method not allowed")
	})
}

func TestNotFoundAndMethodNotAllowed(t *testing.T) {
	e := newEnv(t, "bolt", envOpts{})
	for _, p := range []string{"/", "/api/nothing", "/api/shortlinks/", "/a/b/c", "/x"} {
		resp, body := e.get(p)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET %s: %d", p, resp.StatusCode)
		}
		if m := decode(t, body); m["error"] == "" {
			t.Fatalf("GET %s: no error member: %s", p, body)
		}
	}
	for _, c := range []struct{ method, path, allow string }{
		{"GET", "/api/shortlinks", "POST"},
		{"PUT", "/api/shorten", "POST"},
		{"GET", "/api/external/upload", "POST"},
		{"POST", "/api/user/sharex-config", "GET"},
		// HEAD must not exist on secrets: it would burn a view_once one.
		{"HEAD", "/api/v1/secrets/A1b2C3d4E5f6", "GET"},
		{"DELETE", "/api/v1/secrets/A1b2C3d4E5f6", "GET"},
		{"GET", "/api/v1/secrets/A1b2C3d4E5f6/report", "POST"},
		{"POST", "/myslug", "GET, HEAD"},
	} {
		resp, body := e.do(c.method, c.path, nil, "")
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != c.allow {
			t.Fatalf("%s %s: %d Allow %q, want 405 %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Allow"), c.allow)
		}
		if c.method != "HEAD" {
			wantProblem(t, resp, body, http.StatusMethodNotAllowed, "Method not allowed")
		}
	}
}

func TestNewRequiresSecret(t *testing.T) {
	st := newStore(t, "bolt", envOpts{})
	if _, err := backend.New(backend.Config{Store: st, DataDir: t.TempDir()}); err == nil {
		t.Fatal("New without a secret succeeded")
	}
	if _, err := backend.New(backend.Config{Store: st, DataDir: t.TempDir(), UpstreamSecret: "x", InsecureNoSecret: true}); err == nil {
		t.Fatal("New with a secret and InsecureNoSecret succeeded")
	}
	h, err := backend.New(backend.Config{Store: st, DataDir: t.TempDir(), InsecureNoSecret: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/api/shorten", "application/json", strings.NewReader(`{"url":"https://example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("insecure mode: %d", resp.StatusCode)
	}
	if _, err := backend.New(backend.Config{DataDir: t.TempDir(), UpstreamSecret: "x"}); err == nil {
		t.Fatal("New without a store succeeded")
	}
}
