package keygate

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/freeport"
	"github.com/keygate/keygate/internal/metricstest"
	"github.com/keygate/keygate/internal/problem"
	"github.com/keygate/keygate/internal/redistest"
)

const protectedSite = `
	handle /api/* {
		keygate {
			rate_limit 100 10m
			roles upload
		}
		reverse_proxy {upstream}
	}
	handle {
		keygate {
			anonymous 3 1h
			rate_limit 100 10m
		}
		reverse_proxy {upstream}
	}
`

func TestKeyLifecycleThroughCLI(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	k := generate(t, "--name", "sharex", "--roles", "upload,read", "--owner", "alice")
	if !strings.HasPrefix(k.Key, "sk_") || len(k.Key) != 51 || !strings.HasPrefix(k.Key, strings.TrimSuffix(k.Prefix, "…")) {
		t.Fatalf("generated key %q with prefix %q", k.Key, k.Prefix)
	}

	// both header styles, any header-name case
	r := g.get("/api/x", bearer(k.Key)...)
	if r.status != http.StatusOK {
		t.Fatalf("Bearer: status %d %s", r.status, r.body)
	}
	for name, want := range map[string]string{
		"X-Keygate-Key-Id": k.ID, "X-Keygate-Key-Name": "sharex",
		"X-Keygate-Roles": "upload,read", "X-Keygate-Owner": "alice",
	} {
		if got := r.upstreamSaw.Get(name); got != want {
			t.Errorf("upstream saw %s = %q, want %q", name, got, want)
		}
	}
	if r.upstreamSaw.Get("Authorization") != "" {
		t.Error("the credential reached the upstream")
	}
	for _, h := range []string{"X-API-Key", "x-api-key", "X-Api-Key"} {
		if r := g.get("/api/x", h, k.Key); r.status != http.StatusOK || r.upstreamSaw.Get("X-Api-Key") != "" {
			t.Fatalf("%s: status %d, upstream saw key %q", h, r.status, r.upstreamSaw.Get("X-Api-Key"))
		}
	}
	if r := g.get("/api/x", "Authorization", "bearer "+k.Key); r.status != http.StatusOK {
		t.Fatalf("lowercase bearer scheme: %d", r.status)
	}

	// list shows it without the secret
	out := mustCLI(t, "list")
	if !strings.Contains(out, "sharex") || !strings.Contains(out, k.ID) || strings.Contains(out, k.Key) {
		t.Fatalf("list output:\n%s", out)
	}
	var views []keyView
	if err := json.Unmarshal([]byte(mustCLI(t, "list", "--json")), &views); err != nil || len(views) != 1 || views[0].Key != "" || views[0].LastUsedAt == nil {
		t.Fatalf("list --json = %+v, %v", views, err)
	}

	// rename: names stay unique, the upstream sees the new name at once
	generate(t, "--name", "other")
	if out, err := cli(t, "rename", "sharex", "other"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("rename onto a taken name: %v %s", err, out)
	}
	mustCLI(t, "rename", "sharex", "screenshots")
	if r := g.get("/api/x", bearer(k.Key)...); r.upstreamSaw.Get("X-Keygate-Key-Name") != "screenshots" {
		t.Fatalf("after rename upstream saw name %q", r.upstreamSaw.Get("X-Keygate-Key-Name"))
	}

	// rotate: old secret rejected at once, new one works
	var rotated keyView
	if err := json.Unmarshal([]byte(mustCLI(t, "rotate", "screenshots", "--json")), &rotated); err != nil || rotated.Key == "" || rotated.Key == k.Key || rotated.ID != k.ID {
		t.Fatalf("rotate --json = %+v, %v", rotated, err)
	}
	wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusUnauthorized, "Invalid API key")
	if r := g.get("/api/x", bearer(rotated.Key)...); r.status != http.StatusOK {
		t.Fatalf("rotated key: %d", r.status)
	}

	// disable, enable, delete
	mustCLI(t, "disable", "screenshots")
	wantProblem(t, g.get("/api/x", bearer(rotated.Key)...), http.StatusUnauthorized, "Invalid API key")
	mustCLI(t, "enable", "screenshots")
	if r := g.get("/api/x", bearer(rotated.Key)...); r.status != http.StatusOK {
		t.Fatalf("re-enabled key: %d", r.status)
	}
	mustCLI(t, "delete", "screenshots")
	wantProblem(t, g.get("/api/x", bearer(rotated.Key)...), http.StatusUnauthorized, "Invalid API key")

	// bad input: clear messages, non-zero exit
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"generate", "--name", "other"}, "already exists"},
		{[]string{"generate", "--name", "x", "--expires", "tomorrow"}, "neither a date"},
		{[]string{"generate", "--name", "x", "--expires", "2001-01-01"}, "in the past"},
		{[]string{"generate", "--name", "x", "--rate-limit", "lots"}, "<requests>/<window>"},
		{[]string{"generate", "--name", "x", "--rate-limit", "9223372036854775807/1h"}, "at most 1000000000000000"},
		{[]string{"generate"}, "--name is required"},
		{[]string{"generate", "--name", ".."}, "may not be . or .."},
		{[]string{"rename", "other", "."}, "may not be . or .."},
		{[]string{"disable", "nope"}, "no API key with that name"},
		{[]string{"rotate", "nope"}, "no API key with that name"},
		{[]string{"delete", "nope"}, "no API key with that name"},
		{[]string{"generate", "--name", "x", "--expires", "9999-12-31T23:00:00-01:00"}, "after the year 9999"},
		{[]string{"revoke", "other"}, `unknown command "revoke"`}, // cobra's help and exit 0, unless refused
		{[]string{}, "a subcommand is required"},
		{[]string{"generate", "--name", "x", "--rate-limit", "10/1500us"}, "whole milliseconds"}, // was kept as 10/1ms
	} {
		if out, err := cli(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v (output %q), want it to mention %q", tc.args, err, out, tc.want)
		}
	}
}

// An empty key name is refused before any call: `disable ""` asked for
// /keygate/keys//disable, which the admin server redirects to
// /keygate/keys/disable, and the client followed the redirect: "method
// POST not allowed on /keygate/keys/disable", and `rename disable ""` "a
// name is required", as if the old name were missing.
func TestCLIRefusesAnEmptyName(t *testing.T) {
	startRedisGateway(t, "", protectedSite)
	for _, name := range []string{"disable", "enable", "rotate", "rename", "delete"} {
		generate(t, "--name", name)
	}
	for _, args := range [][]string{{"disable", ""}, {"enable", ""}, {"rotate", ""}, {"delete", ""}, {"rename", "", "x"}, {"rename", "disable", ""}} {
		if out, err := cli(t, args...); err == nil || !strings.Contains(err.Error(), "a key name is required") {
			t.Errorf("%q: err = %v (output %q), want a key name required", args, err, out)
		}
	}
	var keys []keyView
	if err := json.Unmarshal([]byte(mustCLI(t, "list", "--json")), &keys); err != nil || len(keys) != 5 {
		t.Fatalf("list: %v, %+v", err, keys)
	}
	for _, k := range keys {
		if k.Status != "active" {
			t.Errorf("key %q is %s", k.Name, k.Status)
		}
	}
}

// GET /keygate/health is 200 while the key store answers and 503 while it
// does not: what the stack's container health probe asks.
func TestAdminHealth(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	health := func(path ...string) (int, map[string]any) {
		t.Helper()
		resp, err := client.Get("http://" + adminAddr + "/keygate/health" + strings.Join(path, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	if status, body := health(); status != http.StatusOK || body["status"] != "ok" || body["store"] != "redis" {
		t.Fatalf("with Redis up: %d %v, want 200 ok, redis", status, body)
	}
	// a trailing slash is the path without it, for every admin path
	if status, body := health("/"); status != http.StatusOK {
		t.Fatalf("/keygate/health/: %d %v", status, body)
	}
	generate(t, "--name", "slashed")
	req, _ := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/keygate/keys/slashed/disable/", nil)
	if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /keygate/keys/slashed/disable/: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	g.redis.Stop()
	if status, body := health(); status != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(body["error"]), "key store unavailable") {
		t.Fatalf("with Redis stopped: %d %v, want 503 key store unavailable", status, body)
	}
}

// A rotation the store did not confirm is a failure (exit status 1), but
// the CLI shows the new secret the admin API sent with it: if the
// rotation was made, it is the only one that works.
func TestCLIShowsAnUnconfirmedRotationsSecret(t *testing.T) {
	const secret = "sk_0123456789abcdef0123456789abcdef0123456789abcdef"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		adminError{status: http.StatusServiceUnavailable, msg: "key store unavailable: it may have been made", key: secret}.write(w)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	out, err := cli(t, "rotate", "k", "--address", addr)
	if err == nil || !strings.Contains(err.Error(), "it may have been made") || !strings.Contains(err.Error(), "\n    "+secret+"\n") {
		t.Fatalf("rotate: err = %v (output %q); want the failure with the secret on a line of its own", err, out)
	}
	// --json: the secret in the JSON on stdout, where a script reads it,
	// not in the error (a CI log)
	stdout, _, err := cliStreams(t, "rotate", "k", "--json", "--address", addr)
	var printed struct{ Error, Key string }
	if jerr := json.Unmarshal([]byte(stdout), &printed); err == nil || jerr != nil || printed.Key != secret ||
		!strings.Contains(printed.Error, "it may have been made") || strings.Contains(err.Error(), secret) {
		t.Fatalf("rotate --json: err = %v, stdout %q; want a failure, the secret in the JSON only", err, stdout)
	}
}

// A server that is not keygate's admin API (a wrong --address) answers
// with a redirect, or text: the CLI says what it said, and fails; a change
// whose answer does not come in time may have been made, and the CLI says
// so instead of asking whether keygate runs.
func TestCLIOnAServerThatIsNotTheAdminAPI(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/keygate/keys/moved/disable", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/keygate/keys/disable", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/keygate/keys/down/disable", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream down\x1b[2J", http.StatusBadGateway)
	})
	mux.HandleFunc("/keygate/keys/slow/rotate", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(500 * time.Millisecond)
	})
	// a site whose upstream answers JSON: no key's answer, not a success
	mux.HandleFunc("/keygate/keys/json/disable", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok": true}`)
	})
	mux.HandleFunc("/keygate/keys/text/disable", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"id": "x", "name": "text"}`) // right shape, as text/plain
	})
	// a site's refusal is not the CLI's error
	mux.HandleFunc("/keygate/keys/site/disable", func(w http.ResponseWriter, r *http.Request) {
		problem.Write(w, problemMissingKey.Details)
	})
	// the admin API's own error is printed, but not what it would do to
	// a terminal
	mux.HandleFunc("/keygate/keys/escape/disable", func(w http.ResponseWriter, r *http.Request) {
		adminError{status: http.StatusNotFound, msg: "no API key \x1b[2Jthat name"}.write(w)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"disable", "moved"}, "admin API answered 301 Moved Permanently (is " + addr + " keygate's admin API?)"},
		{[]string{"disable", "down"}, "admin API answered 502 Bad Gateway (is " + addr + " keygate's admin API?): upstream down [2J"},
		{[]string{"disable", "json"}, "admin API answered 200 OK with something else than keygate's answer (is " + addr + " keygate's admin API?)"},
		{[]string{"disable", "text"}, "admin API answered 200 OK with something else than keygate's answer"},
		{[]string{"disable", "site"}, "admin API answered 401 Unauthorized (is " + addr + " keygate's admin API?): {"},
		{[]string{"disable", "escape"}, "no API key [2Jthat name"},
	} {
		if out, err := cli(t, append(tc.args, "--address", addr)...); err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\x1b") {
			t.Errorf("%q: err = %v (output %q), want it to mention %q", tc.args, err, out, tc.want)
		}
	}
	a := &adminClient{addr: addr, timeout: 100 * time.Millisecond}
	err := a.call(http.MethodPost, "/keygate/keys/slow/rotate", nil, new(keyView))
	if err == nil || !strings.Contains(err.Error(), "the change may have been made all the same") || strings.Contains(err.Error(), "is keygate running") {
		t.Errorf("a rotation whose answer came late: %v", err)
	}
	free := "127.0.0.1:" + strconv.Itoa(freeport.Get(t))
	if err := (&adminClient{addr: free}).call(http.MethodPost, "/keygate/keys", nil, new(keyView)); err == nil || !strings.Contains(err.Error(), "is keygate running?") {
		t.Errorf("nothing listening: %v", err)
	}
}

// The admin API answers a wrong method with 405 and the methods allowed
// (RFC 9110), a body too large with 413, and anything after a body's JSON
// object with 400.
func TestAdminAPIRefusals(t *testing.T) {
	startRedisGateway(t, "", protectedSite)
	generate(t, "--name", "admin-api")
	var before []keyView
	mustJSON(t, mustCLI(t, "list", "--json"), &before)
	listedBefore := before[0]
	call := func(method, path, body string) response {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+adminAddr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		r := response{status: resp.StatusCode, header: resp.Header}
		if err := json.NewDecoder(resp.Body).Decode(&r.problem); err != nil || r.problem["error"] == nil {
			t.Fatalf("%s %s: %d, problem %v (%v)", method, path, resp.StatusCode, r.problem, err)
		}
		return r
	}
	for _, c := range []struct{ method, path, allow string }{
		{http.MethodPut, "/keygate/keys", "GET, POST"},
		{http.MethodPost, "/keygate/keys/admin-api", "GET, DELETE"},
		{http.MethodGet, "/keygate/keys/admin-api/rotate", "POST"},
	} {
		if r := call(c.method, c.path, ""); r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d, Allow %q; want 405, Allow %q", c.method, c.path, r.status, r.header.Get("Allow"), c.allow)
		}
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/keygate/keys/admin-api/shred"},       // unknown action
		{http.MethodGet, "/keygate/keys/admin-api/shred"},        // whatever the method
		{http.MethodPost, "/keygate/keys/admin-api/rotate/more"}, // nor a path below one
		{http.MethodDelete, "/keygate/keysadmin-api"},            // not the key's path
	} {
		if r := call(c.method, c.path, ""); r.status != http.StatusNotFound {
			t.Errorf("%s %s: %d, want 404", c.method, c.path, r.status)
		}
	}
	if !strings.Contains(mustCLI(t, "list"), "admin-api") {
		t.Error("DELETE /keygate/keysadmin-api deleted the key admin-api")
	}
	for body, want := range map[string]string{
		`{"name": "a"} {"name": "b"}`:         "more after the object",
		`{"NAME": "a"}`:                       `unknown field "NAME"`, // Go's decoder alone takes it for name
		`{"name": "a", "name": "b"}`:          `field "name" given twice`,
		`{"name": "a", "Rate_Limit": "1/1s"}`: `unknown field "Rate_Limit"`,
	} {
		if r := call(http.MethodPost, "/keygate/keys", body); r.status != http.StatusBadRequest || !strings.Contains(r.problem["error"].(string), want) {
			t.Errorf("%s: %d %v, want 400 saying %s", body, r.status, r.problem["error"], want)
		}
	}
	if r := call(http.MethodPost, "/keygate/keys", " "); r.status != http.StatusBadRequest || !strings.Contains(r.problem["error"].(string), "a JSON object is required") {
		t.Errorf("no body: %d %v, want 400 saying a JSON object is required", r.status, r.problem["error"])
	}
	// a body where none is taken would be ignored: refused, as an unknown
	// member is (an empty object, JSON clients' default, is none)
	for _, c := range []struct{ method, path, body, want string }{
		{http.MethodPost, "/keygate/keys/admin-api/rotate", `{"expires": "2030-01-01"}`, `unknown field "expires"`},
		{http.MethodPost, "/keygate/keys/admin-api/disable", `not-json`, "invalid JSON body"},
		{http.MethodDelete, "/keygate/keys/admin-api", `{"name": "admin-api"}`, `unknown field "name"`},
	} {
		if r := call(c.method, c.path, c.body); r.status != http.StatusBadRequest || !strings.Contains(r.problem["error"].(string), c.want) {
			t.Errorf("%s %s with %s: %d %v, want 400 saying %s", c.method, c.path, c.body, r.status, r.problem["error"], c.want)
		}
	}
	var listed []keyView
	mustJSON(t, mustCLI(t, "list", "--json"), &listed)
	for _, k := range listed {
		if k.Name == "a" || k.Name == "b" {
			t.Errorf("key %s created from a refused body", k.Name)
		}
		if k.Name == "admin-api" && (!k.Enabled || k.Prefix != listedBefore.Prefix) {
			t.Errorf("key admin-api changed by a refused call: %+v, was %+v", k, listedBefore)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/keygate/keys/admin-api/disable", strings.NewReader("{}"))
	if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("disable with an empty JSON object: %v, %v; want 200", resp, err)
	} else {
		resp.Body.Close()
	}
	big := `{"name": "big", "owner": "` + strings.Repeat("x", maxAdminBody) + `"}`
	if r := call(http.MethodPost, "/keygate/keys", big); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over %d bytes: %d, want 413", maxAdminBody, r.status)
	}
	if strings.Contains(mustCLI(t, "list"), "big") {
		t.Error("a key was created from a refused body")
	}
}

// A key that is expired, disabled, rotated away or deleted is refused as
// invalid (401) on a route that wants roles it lacks, as on a gateway that
// has not seen it, not for its roles (403), though this gateway cached it
// while it was good and has not seen it since; and a key that matches none
// is the store's answer, not a store error in the metrics.
func TestInvalidKeysOnARolesRoute(t *testing.T) {
	g := startRedisGateway(t, "", `
	handle /upload* {
		keygate {
			roles upload
		}
		reverse_proxy {upstream}
	}
	handle {
		keygate
		reverse_proxy {upstream}
	}`)
	// RFC 3339 in whole seconds: at least 2 s to go
	expiring := generate(t, "--name", "expiring", "--roles", "read", "--expires", time.Now().Add(3*time.Second).UTC().Format(time.RFC3339))
	disabled := generate(t, "--name", "disabled", "--roles", "read")
	rotated := generate(t, "--name", "rotated", "--roles", "read")
	deleted := generate(t, "--name", "deleted", "--roles", "read")
	all := []keyView{expiring, disabled, rotated, deleted}
	for _, k := range all {
		if r := g.get("/x", bearer(k.Key)...); r.status != http.StatusOK {
			t.Fatalf("%s on /x: %d", k.Name, r.status)
		}
		wantProblem(t, g.get("/upload", bearer(k.Key)...), http.StatusForbidden, "API key lacks the required role")
	}
	// a client looping on a route it may not use costs the store a call a
	// second at most, not one a request
	checks := metricstest.StoreCalls(t, adminAddr, "check")
	for range 20 {
		wantProblem(t, g.get("/upload", bearer(disabled.Key)...), http.StatusForbidden, "API key lacks the required role")
	}
	if n := metricstest.StoreCalls(t, adminAddr, "check") - checks; n > 1 {
		t.Errorf("20 refusals for roles made %d store calls", n)
	}
	mustCLI(t, "disable", "disabled")
	// at once, within the second of its last confirmation: a change
	// learned of (here through this gateway's admin API) ends that
	wantProblem(t, g.get("/upload", bearer(disabled.Key)...), http.StatusUnauthorized, "Invalid API key")
	mustCLI(t, "rotate", "rotated")
	mustCLI(t, "delete", "deleted")
	time.Sleep(time.Until(*expiring.ExpiresAt))
	for _, k := range all {
		r := g.get("/upload", bearer(k.Key)...)
		wantProblem(t, r, http.StatusUnauthorized, "Invalid API key")
		if !strings.Contains(r.header.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Errorf("%s: WWW-Authenticate %q", k.Name, r.header.Get("WWW-Authenticate"))
		}
	}

	const lookupErrors = `keygate_store_errors_total{op="lookup"}`
	before := metricstest.Counter(t, adminAddr, lookupErrors)
	wantProblem(t, g.get("/x", "X-API-Key", "sk_"+strings.Repeat("ab", 24)), http.StatusUnauthorized, "Invalid API key")
	if after := metricstest.Counter(t, adminAddr, lookupErrors); after != before {
		t.Errorf("%s went from %v to %v for a key that matches none", lookupErrors, before, after)
	}
}

func TestRefusals(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	reader := generate(t, "--name", "reader", "--roles", "read")
	uploader := generate(t, "--name", "uploader", "--roles", "upload")
	expiring := generate(t, "--name", "expiring", "--roles", "upload", "--expires", time.Now().Add(1500*time.Millisecond).UTC().Format(time.RFC3339))

	// Short Link's text for an X-API-Key header that "doesn't exist"
	r := g.get("/api/x")
	wantProblem(t, r, http.StatusUnauthorized, "Invalid API key")
	if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="keygate"` {
		t.Errorf("missing key WWW-Authenticate = %q", got)
	}
	if r.problem["type"] != shlinkInvalidKeyType || r.problem["title"] != "Invalid API key" || r.problem["detail"] != "Provided API key does not exist or is invalid" {
		t.Errorf("missing key body not Shlink's: %s", r.body)
	}

	r = g.get("/api/x", bearer("sk_live_xxx")...)
	wantProblem(t, r, http.StatusUnauthorized, "Invalid API key format")
	if !strings.Contains(r.header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("malformed WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
	}

	r = g.get("/api/x", "X-API-Key", "sk_"+strings.Repeat("ab", 24))
	wantProblem(t, r, http.StatusUnauthorized, "Invalid API key")
	if r.problem["type"] != shlinkInvalidKeyType || r.problem["detail"] != "Provided API key does not exist or is invalid" {
		t.Errorf("unknown key body not Shlink's: %s", r.body)
	}
	if !strings.Contains(r.header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("unknown key WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
	}

	wantProblem(t, g.get("/api/x", append(bearer(uploader.Key), "X-API-Key", reader.Key)...), http.StatusBadRequest,
		"Conflicting API keys in Authorization and X-API-Key")
	if r := g.get("/api/x", append(bearer(uploader.Key), "X-API-Key", uploader.Key)...); r.status != http.StatusOK {
		t.Errorf("same key in both headers: %d", r.status)
	}
	wantProblem(t, g.get("/api/x", append(bearer(uploader.Key), bearer(reader.Key)...)...), http.StatusBadRequest,
		"Conflicting API keys in Authorization and X-API-Key")
	// a key behind another scheme's Authorization value is the request's
	// key, and only it is removed
	r = g.get("/other", append([]string{"Authorization", "Basic Zm9vOmJhcg=="}, bearer(uploader.Key)...)...)
	if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Id") != uploader.ID ||
		!slices.Equal(r.upstreamSaw.Values("Authorization"), []string{"Basic Zm9vOmJhcg=="}) {
		t.Errorf("Basic, then Bearer: status %d, upstream saw %v", r.status, r.upstreamSaw)
	}

	r = g.get("/api/x", bearer(reader.Key)...)
	wantProblem(t, r, http.StatusForbidden, "API key lacks the required role")
	if !strings.Contains(r.header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Errorf("403 WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
	}
	if r := g.get("/other", bearer(reader.Key)...); r.status != http.StatusOK {
		t.Errorf("reader on a route without roles: %d", r.status)
	}

	if r := g.get("/api/x", bearer(expiring.Key)...); r.status != http.StatusOK {
		t.Fatalf("key before expiry: %d", r.status)
	}
	time.Sleep(time.Until(*expiring.ExpiresAt) + 100*time.Millisecond)
	wantProblem(t, g.get("/api/x", bearer(expiring.Key)...), http.StatusUnauthorized, "Invalid API key")
	if !strings.Contains(mustCLI(t, "list"), "expired") {
		t.Error("list does not show the key as expired")
	}

	// a bad key on an anonymous route is refused, not downgraded
	wantProblem(t, g.get("/public", bearer("sk_nope")...), http.StatusUnauthorized, "Invalid API key format")
	// nor passed on as another scheme's when a tab follows Bearer
	wantProblem(t, g.get("/public", "Authorization", "Bearer\tsk_nope"), http.StatusUnauthorized, "Invalid API key format")
}

func TestSpoofedIdentityHeadersAreReplaced(t *testing.T) {
	// Caddy drops every header with an underscore unless the server
	// allowlists it: here it lets those through that CGI-style upstreams
	// would read as keygate's, which keygate must strip itself.
	srv := redistest.Start(t)
	g := startGateway(t, fmt.Sprintf(`keygate {
		redis %s
	}
	servers {
		expected_underscore_headers X_keygate_* X-keygate_*
	}`, srv.URL()), protectedSite)
	k := generate(t, "--name", "honest", "--roles", "upload")
	spoof := []string{
		"X-Keygate-Key-Id", "admin", "x-keygate-roles", "admin", "X-KEYGATE-OWNER", "root",
		"X-Keygate-Anonymous", "false", "X-Keygate-Upstream-Secret", "guess", "X-Keygate-Whatever", "1",
		// CGI, FastCGI, WSGI and Rack read these as HTTP_X_KEYGATE_KEY_ID...
		"X_Keygate_Key_Id", "admin", "x-keygate_owner", "root", "X_KEYGATE_ROLES", "admin",
	}
	noUnderscoredIdentity := func(saw http.Header) {
		t.Helper()
		for name := range saw {
			if strings.Contains(name, "_") && strings.HasPrefix(strings.ToLower(strings.ReplaceAll(name, "_", "-")), "x-keygate-") {
				t.Errorf("upstream saw client-sent %s: %q", name, saw[name])
			}
		}
	}
	r := g.get("/api/x", append(bearer(k.Key), spoof...)...)
	if r.status != http.StatusOK {
		t.Fatalf("status %d", r.status)
	}
	noUnderscoredIdentity(r.upstreamSaw)
	if r.upstreamSaw.Get("X-Keygate-Key-Id") != k.ID || r.upstreamSaw.Get("X-Keygate-Roles") != "upload" ||
		len(r.upstreamSaw.Values("X-Keygate-Key-Id")) != 1 {
		t.Fatalf("upstream saw spoofed identity: %v", r.upstreamSaw)
	}
	// the key has no owner: no X-Keygate-Owner at all, the client's gone
	if v, sent := r.upstreamSaw["X-Keygate-Owner"]; sent {
		t.Fatalf("upstream saw X-Keygate-Owner %q for a key without an owner", v)
	}
	for _, h := range []string{"X-Keygate-Anonymous", "X-Keygate-Upstream-Secret", "X-Keygate-Whatever"} {
		if v := r.upstreamSaw.Get(h); v != "" {
			t.Errorf("upstream saw client-sent %s: %q", h, v)
		}
	}
	r = g.get("/public", spoof...)
	if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Anonymous") != "true" || r.upstreamSaw.Get("X-Keygate-Key-Id") != "" || r.upstreamSaw.Get("X-Keygate-Roles") != "" {
		t.Fatalf("anonymous request: status %d, upstream saw %v", r.status, r.upstreamSaw)
	}
	noUnderscoredIdentity(r.upstreamSaw)

	// Headers named in Connection are hop-by-hop, which reverse_proxy
	// removes: a client must not take the gateway's own away that way.
	for _, conn := range []string{"keep-alive, X-Keygate-Key-Id, x-keygate-roles", "X-Keygate-Anonymous"} {
		r = g.get("/api/x", append(bearer(k.Key), "Connection", conn)...)
		if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Id") != k.ID || r.upstreamSaw.Get("X-Keygate-Roles") != "upload" {
			t.Fatalf("Connection: %s: status %d, upstream saw %v", conn, r.status, r.upstreamSaw)
		}
		r = g.get("/public", "Connection", conn)
		if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Anonymous") != "true" {
			t.Fatalf("anonymous, Connection: %s: status %d, upstream saw %v", conn, r.status, r.upstreamSaw)
		}
	}
}

// A keygate for the site and another inside a route: the second finds
// the request without its key (the first removed it) and with the
// identity headers it strips as a client's. It answered 401 "Invalid API
// key" to a good key, or passed it on as anonymous; now it says the config
// is wrong (500, logged, counted), and a client's own identity headers
// without a key are still stripped and answered as before.
func TestSecondKeygateOnAPathIsAConfigError(t *testing.T) {
	g := startGateway(t, "", `
	keygate {
		rate_limit 100 10m
	}
	handle /admin/* {
		keygate {
			roles admin
		}
		reverse_proxy {upstream}
	}
	handle /open/* {
		keygate {
			anonymous 100 1m
		}
		reverse_proxy {upstream}
	}
	reverse_proxy {upstream}
`)
	k := generate(t, "--name", "twice", "--roles", "admin")
	const misconfigured = `keygate_decisions_total{outcome="misconfigured"}`
	before := metricstest.Counter(t, adminAddr, misconfigured)
	if r := g.get("/x", bearer(k.Key)...); r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Id") != k.ID {
		t.Fatalf("one keygate on the path: %d, upstream saw %v", r.status, r.upstreamSaw)
	}
	for _, path := range []string{"/admin/x", "/open/x"} {
		wantProblem(t, g.get(path, bearer(k.Key)...), http.StatusInternalServerError, "Internal Server Error")
	}
	if got := metricstest.Counter(t, adminAddr, misconfigured) - before; got != 2 {
		t.Errorf("%s rose by %v, want 2", misconfigured, got)
	}
	// no key: the site's keygate refuses it before the route's runs
	wantProblem(t, g.get("/open/x", "X-Keygate-Key-Id", "spoof"), http.StatusUnauthorized, "Invalid API key")

	// A site's keygate that admits anonymous callers took no key away
	// from them: the route's refuses one without a key as always (401),
	// so no client brings about the 500.
	g = startGateway(t, "", `
	keygate {
		anonymous 100 1m
	}
	handle /admin/* {
		keygate {
			roles admin
		}
		reverse_proxy {upstream}
	}
	reverse_proxy {upstream}
`)
	before = metricstest.Counter(t, adminAddr, misconfigured)
	wantProblem(t, g.get("/admin/x"), http.StatusUnauthorized, "Invalid API key")
	wantProblem(t, g.get("/admin/x", bearer(k.Key)...), http.StatusInternalServerError, "Internal Server Error")
	if got := metricstest.Counter(t, adminAddr, misconfigured) - before; got != 1 {
		t.Errorf("%s rose by %v, want 1 (the keyed request)", misconfigured, got)
	}
}

func TestRateLimitHeadersAndRefusal(t *testing.T) {
	for _, algorithm := range []string{"sliding_window", "sliding_log"} {
		t.Run(algorithm, func(t *testing.T) {
			g := startRedisGateway(t, "", `
	keygate {
		rate_limit 3 1m
		algorithm `+algorithm+`
	}
	reverse_proxy {upstream}`)
			k := generate(t, "--name", "limited")
			var last response
			for i := range 3 {
				last = g.get("/", bearer(k.Key)...)
				if last.status != http.StatusOK {
					t.Fatalf("request %d: %d", i+1, last.status)
				}
				wantRateHeaders(t, last, "key", 3, 60, int64(2-i))
			}
			r := g.get("/", bearer(k.Key)...)
			wantProblem(t, r, http.StatusTooManyRequests, "Too much request. Try again later.")
			wantRateHeaders(t, r, "key", 3, 60, 0)
			// Remaining 0: the reset is when the refusal's is, the moment a
			// request will be admitted again
			if got, want := last.header.Get("X-RateLimit-Reset"), r.header.Get("X-RateLimit-Reset"); got != want {
				t.Fatalf("X-RateLimit-Reset with Remaining 0 = %s, the refusal's = %s: want the same", got, want)
			}
			retry, err := strconv.Atoi(r.header.Get("Retry-After"))
			if err != nil || retry < 1 || retry > 120 { // a sliding window may wait into the next window
				t.Fatalf("Retry-After = %q", r.header.Get("Retry-After"))
			}

			// a key's own limit wins over the route's
			own := generate(t, "--name", "own", "--rate-limit", "1/1h")
			if r := g.get("/", bearer(own.Key)...); r.status != http.StatusOK {
				t.Fatalf("own-limit key first request: %d", r.status)
			} else {
				wantRateHeaders(t, r, "key", 1, 3600, 0)
			}
			wantProblem(t, g.get("/", bearer(own.Key)...), http.StatusTooManyRequests, "Too much request. Try again later.")
		})
	}
}

// ignore_key_limits holds a key with a limit of its own to the route's:
// Short Link's 20 a minute is its contract, whatever tier a key has
// elsewhere.
func TestIgnoreKeyLimits(t *testing.T) {
	g := startRedisGateway(t, "", `
	handle /contract {
		keygate {
			rate_limit 2 1m
			ignore_key_limits
		}
		reverse_proxy {upstream}
	}
	handle {
		keygate {
			rate_limit 2 1m
		}
		reverse_proxy {upstream}
	}`)
	paid := generate(t, "--name", "paid", "--rate-limit", "100/1h")
	for i := range 2 {
		r := g.get("/contract", bearer(paid.Key)...)
		if r.status != http.StatusOK {
			t.Fatalf("/contract request %d: %d", i+1, r.status)
		}
		wantRateHeaders(t, r, "key", 2, 60, int64(1-i))
	}
	wantProblem(t, g.get("/contract", bearer(paid.Key)...), http.StatusTooManyRequests, "Too much request. Try again later.")
	// elsewhere its own limit wins, as before
	r := g.get("/other", bearer(paid.Key)...)
	if r.status != http.StatusOK {
		t.Fatalf("/other: %d", r.status)
	}
	wantRateHeaders(t, r, "key", 100, 3600, 99)
}

// rate_limit_message is a route's 429 text, for clients of a product whose
// doc words it otherwise (SecLink's); anonymous callers' 429s too.
func TestRateLimitMessage(t *testing.T) {
	g := startRedisGateway(t, "", `
	keygate {
		rate_limit 1 1m
		anonymous 1 1m
		rate_limit_message "You have exceeded your rate limit"
	}
	reverse_proxy {upstream}`)
	k := generate(t, "--name", "worded")
	for _, who := range [][]string{bearer(k.Key), nil} {
		if r := g.get("/", who...); r.status != http.StatusOK {
			t.Fatalf("first request: %d", r.status)
		}
		wantProblem(t, g.get("/", who...), http.StatusTooManyRequests, "You have exceeded your rate limit")
	}
}

// Routes in different zones keep their budgets apart, though their limits
// match; routes without a zone share one, as before; anonymous callers
// alike; with leases too.
func TestZonesKeepBudgetsApart(t *testing.T) {
	for _, lease := range []string{"0", "64"} {
		t.Run("lease "+lease, func(t *testing.T) {
			route := func(path, zone string) string {
				if zone != "" {
					zone = "zone " + zone
				}
				return `
	handle ` + path + ` {
		keygate {
			rate_limit 1 1m
			anonymous 1 1m
			lease ` + lease + `
			` + zone + `
		}
		reverse_proxy {upstream}
	}`
			}
			g := startRedisGateway(t, "", route("/alpha", "alpha")+route("/beta", "beta")+route("/plain", "")+route("/also-plain", ""))
			k := generate(t, "--name", "zoned-"+lease)
			for _, who := range [][]string{bearer(k.Key), nil} {
				for _, step := range []struct {
					path   string
					status int
				}{
					{"/alpha", http.StatusOK},
					{"/alpha", http.StatusTooManyRequests},
					{"/beta", http.StatusOK}, // its own zone
					{"/plain", http.StatusOK},
					{"/also-plain", http.StatusTooManyRequests}, // no zone: one budget with /plain
				} {
					if r := g.get(step.path, who...); r.status != step.status {
						t.Fatalf("key %v, %s: %d, want %d", who != nil, step.path, r.status, step.status)
					}
				}
			}
		})
	}
}

// rate_limit_headers picks the headers of each route's responses; a 429
// says when to retry whatever it picks.
func TestRateLimitHeadersOption(t *testing.T) {
	g := startRedisGateway(t, "", `
	handle /x-ratelimit {
		keygate {
			rate_limit 1 1m
			rate_limit_headers x-ratelimit
		}
		reverse_proxy {upstream}
	}
	handle /ietf {
		keygate {
			rate_limit 1 1m
			rate_limit_headers ietf
		}
		reverse_proxy {upstream}
	}
	handle /none {
		keygate {
			anonymous 1 1m
			rate_limit_headers none
		}
		reverse_proxy {upstream}
	}`)
	for path, want := range map[string][]string{
		"/x-ratelimit": {"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"},
		"/ietf":        {"Ratelimit-Policy", "Ratelimit"},
		"/none":        nil,
	} {
		// a key per route: routes with the same limit share its counter
		k := generate(t, "--name", "headers"+strings.ReplaceAll(path, "/", "-"))
		for _, status := range []int{http.StatusOK, http.StatusTooManyRequests} {
			r := g.get(path, bearer(k.Key)...)
			if path == "/none" {
				r = g.get(path)
			}
			if r.status != status {
				t.Fatalf("%s: %d, want %d", path, r.status, status)
			}
			var got []string
			for name := range r.header {
				if strings.Contains(name, "Ratelimit") {
					got = append(got, name)
				}
			}
			slices.Sort(got)
			if want := slices.Sorted(slices.Values(want)); !slices.Equal(got, want) {
				t.Errorf("%s %d: rate-limit headers %v, want %v", path, status, got, want)
			}
			if status == http.StatusTooManyRequests && r.header.Get("Retry-After") == "" {
				t.Errorf("%s: a 429 without Retry-After", path)
			}
		}
	}
}

// wantRateHeaders checks both header styles of one decision.
func wantRateHeaders(t *testing.T, r response, policy string, limit, windowSeconds, remaining int64) {
	t.Helper()
	h := r.header
	if h.Get("X-RateLimit-Limit") != strconv.FormatInt(limit, 10) || h.Get("X-RateLimit-Remaining") != strconv.FormatInt(remaining, 10) {
		t.Fatalf("X-RateLimit-Limit/Remaining = %q/%q, want %d/%d", h.Get("X-RateLimit-Limit"), h.Get("X-RateLimit-Remaining"), limit, remaining)
	}
	reset, err := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64)
	now := time.Now().UnixMilli()
	// A refused sliding-window request may have to wait into the next
	// window (until enough of this one's count has slid out): up to two.
	if err != nil || reset < now-1000 || reset > now+2*windowSeconds*1000+1000 {
		t.Fatalf("X-RateLimit-Reset = %q is not Unix ms within the window (now %d)", h.Get("X-RateLimit-Reset"), now)
	}
	if want := `"` + policy + `";q=` + strconv.FormatInt(limit, 10) + ";w=" + strconv.FormatInt(windowSeconds, 10); h.Get("RateLimit-Policy") != want {
		t.Fatalf("RateLimit-Policy = %q, want %q", h.Get("RateLimit-Policy"), want)
	}
	if !strings.HasPrefix(h.Get("RateLimit"), `"`+policy+`";r=`+strconv.FormatInt(remaining, 10)+";t=") {
		t.Fatalf("RateLimit = %q", h.Get("RateLimit"))
	}
}

// wantCountedFromTheResume keeps srv, paused while a request waits on
// waiting, paused 1.5 s more, resumes it, and checks the request: admitted,
// and RateLimit's t (seconds to the reset) counted from no earlier than the
// resume, at most the seconds from then to X-RateLimit-Reset, rounded up.
func wantCountedFromTheResume(t *testing.T, srv *redistest.Server, waiting <-chan response) {
	t.Helper()
	time.Sleep(1500 * time.Millisecond)
	resumed := time.Now()
	srv.Resume()
	r := <-waiting
	if r.status != http.StatusOK {
		t.Fatalf("the request that waited for the store: %d %s", r.status, r.body)
	}
	resetMs, err := strconv.ParseInt(r.header.Get("X-RateLimit-Reset"), 10, 64)
	if err != nil {
		t.Fatalf("X-RateLimit-Reset %q", r.header.Get("X-RateLimit-Reset"))
	}
	_, after, _ := strings.Cut(r.header.Get("RateLimit"), ";t=")
	seconds, err := strconv.ParseInt(after, 10, 64)
	if err != nil {
		t.Fatalf("RateLimit %q", r.header.Get("RateLimit"))
	}
	if most := (resetMs - resumed.UnixMilli() + 999) / 1000; seconds > most {
		t.Fatalf("RateLimit t=%d, want at most %d (X-RateLimit-Reset %d)", seconds, most, resetMs)
	}
}

// The seconds to the reset count from the store's answer, not from the
// request's arrival: with the store stalled 1.5 s, neither a keyed nor an
// anonymous request reports more seconds than from when it answered.
func TestHeadersCountFromTheStoresAnswer(t *testing.T) {
	srv := redistest.Start(t)
	g := startGatewayOn(t, srv, `
	keygate {
		rate_limit 1000000 24h
		anonymous 1000000 24h
	}
	reverse_proxy {upstream}`, "timeout 3s")
	key := generate(t, "--name", "slow-store").Key
	for _, headers := range [][]string{bearer(key), nil} {
		// the key cached and the store's connection open, before the stall
		if r := g.get("/", headers...); r.status != http.StatusOK {
			t.Fatalf("before the stall: %d %s", r.status, r.body)
		}
		srv.Pause()
		waiting := make(chan response, 1)
		go func() { waiting <- g.get("/", headers...) }()
		wantCountedFromTheResume(t, srv, waiting)
	}
}

func TestAnonymousLimitedPerClientIP(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	for i := range 3 {
		r := g.get("/public")
		if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Anonymous") != "true" {
			t.Fatalf("anonymous request %d: %d %v", i+1, r.status, r.upstreamSaw)
		}
		wantRateHeaders(t, r, "ip", 3, 3600, int64(2-i))
	}
	r := g.get("/public")
	wantProblem(t, r, http.StatusTooManyRequests, "Too much request. Try again later.")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// a key is not held to the per-IP limit
	k := generate(t, "--name", "keyed")
	if r := g.get("/public", bearer(k.Key)...); r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Id") != k.ID {
		t.Fatalf("keyed request on anonymous route: %d", r.status)
	}
}

func TestStoreOutageClosed(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	k := generate(t, "--name", "k", "--roles", "upload")
	if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
		t.Fatalf("before outage: %d", r.status)
	}

	g.redis.Pause() // hung Redis: answers nothing
	start := time.Now()
	r := g.get("/api/x", bearer(k.Key)...)
	wantProblem(t, r, http.StatusServiceUnavailable, "Key store unavailable")
	if time.Since(start) > 5*time.Second {
		t.Fatalf("a hung Redis stalled the request for %v", time.Since(start))
	}
	wantProblem(t, g.get("/public"), http.StatusServiceUnavailable, "Key store unavailable")
	g.redis.Resume()
	waitFor(t, func() bool { return g.get("/api/x", bearer(k.Key)...).status == http.StatusOK })

	g.redis.Stop() // refused connections
	wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusServiceUnavailable, "Key store unavailable")
	g.redis.Restart() // back, empty: the gateway reconnects by itself
	waitFor(t, func() bool { return g.get("/public").status == http.StatusOK })
}

func TestStoreOutageOpen(t *testing.T) {
	g := startRedisGateway(t, "on_store_error open", protectedSite)
	seen := generate(t, "--name", "seen", "--roles", "upload")
	unseen := generate(t, "--name", "unseen", "--roles", "upload")
	if r := g.get("/api/x", bearer(seen.Key)...); r.status != http.StatusOK {
		t.Fatalf("before outage: %d", r.status)
	}
	g.redis.Stop()
	r := g.get("/api/x", bearer(seen.Key)...)
	if r.status != http.StatusOK || r.upstreamSaw.Get("X-Keygate-Key-Id") != seen.ID {
		t.Fatalf("recently validated key during outage (open): %d %s", r.status, r.body)
	}
	wantProblem(t, g.get("/api/x", bearer(unseen.Key)...), http.StatusServiceUnavailable, "Key store unavailable")
	wantProblem(t, g.get("/public"), http.StatusServiceUnavailable, "Key store unavailable")
}

// A key validated recently, then disabled or expired, is known to be so
// from what the store last said of it: an outage does not let it through.
func TestStoreOutageOpenRefusesKeysKnownInvalid(t *testing.T) {
	g := startRedisGateway(t, "on_store_error open", protectedSite)
	disabled := generate(t, "--name", "disabled", "--roles", "upload")
	expiring := generate(t, "--name", "expiring", "--roles", "upload",
		"--expires", time.Now().Add(3*time.Second).UTC().Format(time.RFC3339))
	for _, k := range []keyView{disabled, expiring} {
		if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
			t.Fatalf("%s before the outage: %d %s", k.Name, r.status, r.body)
		}
	}
	mustCLI(t, "disable", disabled.Name)
	// the store's answer brings the disabled record to this gateway
	wantProblem(t, g.get("/api/x", bearer(disabled.Key)...), http.StatusUnauthorized, "Invalid API key")
	time.Sleep(time.Until(*expiring.ExpiresAt))

	g.redis.Stop()
	wantProblem(t, g.get("/api/x", bearer(disabled.Key)...), http.StatusUnauthorized, "Invalid API key")
	wantProblem(t, g.get("/api/x", bearer(expiring.Key)...), http.StatusUnauthorized, "Invalid API key")
}

// A key validated before this gateway learned of a key change (here a
// rotation through its admin API) may be the one that changed: an outage
// does not let it through, while a key validated since still passes; an
// attempted change that the store, down, never began is no change.
// (Else a rotated-away secret, the leaked one, passed for fail_open_grace.)
func TestStoreOutageOpenRefusesKeysValidatedBeforeAChange(t *testing.T) {
	g := startRedisGateway(t, "on_store_error open", protectedSite)
	rotated := generate(t, "--name", "rotated", "--roles", "upload")
	busy := generate(t, "--name", "busy", "--roles", "upload")
	for _, k := range []keyView{rotated, busy} {
		if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
			t.Fatalf("%s before the rotation: %d %s", k.Name, r.status, r.body)
		}
	}
	mustCLI(t, "rotate", rotated.Name)
	if r := g.get("/api/x", bearer(busy.Key)...); r.status != http.StatusOK {
		t.Fatalf("busy after the rotation: %d %s", r.status, r.body)
	}

	g.redis.Stop()
	wantProblem(t, g.get("/api/x", bearer(rotated.Key)...), http.StatusServiceUnavailable, "Key store unavailable")
	// a change the store could not begin changed nothing: the keys
	// validated since the rotation still pass
	if _, err := cli(t, "disable", rotated.Name); err == nil {
		t.Fatal("a disable with the store down succeeded")
	}
	if r := g.get("/api/x", bearer(busy.Key)...); r.status != http.StatusOK {
		t.Fatalf("a key validated since the change, during the outage: %d %s", r.status, r.body)
	}
}

// A change made through another gateway reaches this one within a poll of
// the epoch, without leases too: a key validated before it does not pass
// an outage under on_store_error open (before, a gateway without leases
// learned only of changes through its own admin API, and a key revoked
// elsewhere passed for fail_open_grace). The other gateway's change is
// the epoch it moves, moved here in Redis.
func TestStoreOutageOpenLearnsOfChangesElsewhere(t *testing.T) {
	g := startRedisGateway(t, "on_store_error open", protectedSite)
	k := generate(t, "--name", "elsewhere", "--roles", "upload")
	if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
		t.Fatalf("before the change: %d %s", r.status, r.body)
	}
	time.Sleep(2 * epochPollEvery) // the gateway has read the epoch as it was
	if err := g.redis.Client(t).Incr(context.Background(), "keygate:epoch").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * epochPollEvery)
	g.redis.Stop()
	wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusServiceUnavailable, "Key store unavailable")
}

// A reload from a config that polled nothing (on_store_error closed, no
// lease) to one that fails open keeps the key cache, and the changes made
// through other gateways meanwhile went unseen: keys validated before do
// not pass an outage.
func TestStoreOutageOpenAfterAReloadFromClosed(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	k := generate(t, "--name", "reloaded", "--roles", "upload")
	if r := g.get("/api/x", bearer(k.Key)...); r.status != http.StatusOK {
		t.Fatalf("before the reload: %d %s", r.status, r.body)
	}
	// another gateway's change: the epoch it moves
	if err := g.redis.Client(t).Incr(context.Background(), "keygate:epoch").Err(); err != nil {
		t.Fatal(err)
	}
	g = startGatewayOn(t, g.redis, protectedSite, "on_store_error open")
	time.Sleep(2 * epochPollEvery)
	g.redis.Stop()
	wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusServiceUnavailable, "Key store unavailable")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("condition not met within 10s")
}

// A change that was made but whose epoch could not be moved (here the
// epoch key holds no integer, so INCR fails) is a success with a warning:
// a rotation's new secret, the only one that works now, is not lost in a
// 503, and a deletion says it was made.
func TestChangeMadeButUnannouncedIsASuccess(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	k := generate(t, "--name", "k", "--roles", "upload")
	ctx := context.Background()
	if err := g.redis.Client(t).Set(ctx, "keygate:epoch", "not a number", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var rotated keyView
	stdout, stderr, err := cliStreams(t, "rotate", "k", "--json")
	if err != nil {
		t.Fatal(err)
	}
	mustJSON(t, stdout, &rotated)
	if rotated.Key == "" || rotated.Key == k.Key || !strings.Contains(rotated.Warning, "may admit it as it was") {
		t.Fatalf("rotate with the epoch not moved = %+v; want the new key and a warning", rotated)
	}
	if !strings.Contains(stderr, "Warning: key changed, but gateways") { // what a script shows
		t.Errorf("rotate --json: stderr %q, want the warning", stderr)
	}
	if r := g.get("/api/x", bearer(rotated.Key)...); r.status != http.StatusOK {
		t.Fatalf("the new secret: %d", r.status)
	}
	wantProblem(t, g.get("/api/x", bearer(k.Key)...), http.StatusUnauthorized, "Invalid API key")
	if out := mustCLI(t, "disable", "k"); !strings.Contains(out, "Warning: key changed, but gateways") {
		t.Errorf("disable printed %q, want the warning", out)
	}
	var deleted deletedView
	stdout, stderr, err = cliStreams(t, "delete", "k", "--json")
	if err != nil {
		t.Fatal(err)
	}
	mustJSON(t, stdout, &deleted)
	if deleted.Deleted != "k" || deleted.Warning == "" || !strings.Contains(stderr, "Warning:") {
		t.Fatalf("delete = %+v, stderr %q; want k deleted with a warning, on stderr too", deleted, stderr)
	}
}

// An expiry finer than a millisecond is kept to the millisecond, as Redis
// keeps it: what creating a key answers is what reading it later does.
func TestExpiryIsKeptToTheMillisecond(t *testing.T) {
	startRedisGateway(t, "", protectedSite)
	created := generate(t, "--name", "precise", "--expires", "2030-01-01T00:00:00.123456789Z")
	var listed []keyView
	mustJSON(t, mustCLI(t, "list", "--json"), &listed)
	want := time.Date(2030, 1, 1, 0, 0, 0, 123_000_000, time.UTC)
	if created.ExpiresAt == nil || !created.ExpiresAt.Equal(want) || len(listed) != 1 || !listed[0].ExpiresAt.Equal(want) {
		t.Fatalf("expires_at created %v, listed %+v; want %v both", created.ExpiresAt, listed, want)
	}
}

// X-Keygate-* trailers a client sends never reach the upstream, declared
// in Trailer or not: reverse_proxy forwards trailers, and an upstream that
// merges them into its headers would take them for the gateway's word.
func TestSpoofedIdentityTrailersAreDropped(t *testing.T) {
	g := startRedisGateway(t, "", protectedSite)
	k := generate(t, "--name", "honest", "--roles", "upload")
	for _, declared := range []string{"Trailer: X-Keygate-Key-Id, x_keygate_roles, Other\r\n", ""} {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(g.base, "http://"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"+
			"Transfer-Encoding: chunked\r\n%s\r\n5\r\nhello\r\n0\r\n"+
			"X-Keygate-Key-Id: victim\r\nx_keygate_roles: admin\r\nX-Keygate-Owner: root\r\nOther: kept\r\n\r\n", k.Key, declared)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		var saw map[string][]string
		err = json.NewDecoder(resp.Body).Decode(&saw)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("%q: status %d, %v", declared, resp.StatusCode, err)
		}
		for name, values := range saw {
			if rest, ok := strings.CutPrefix(name, "trailer:"); ok && isIdentityHeader(rest) {
				t.Errorf("%q: the upstream saw the trailer %s: %q", declared, rest, values)
			}
		}
		if declared != "" && saw["trailer:Other"] == nil {
			t.Errorf("the declared trailer Other did not reach the upstream: %v", saw)
		}
		if got := saw["X-Keygate-Key-Id"]; len(got) != 1 || got[0] != k.ID {
			t.Errorf("X-Keygate-Key-Id %q, want %s", got, k.ID)
		}
	}
}
