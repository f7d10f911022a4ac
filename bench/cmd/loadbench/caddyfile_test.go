package main

import (
	"encoding/json"
	"strings"
	"testing"

	caddyfileadapter "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/keygate/keygate/caddymodule"
)

// Every proxy config the benchmark renders adapts without warnings, and
// keygate's names its store as asked: the Redis URL, or no store at all
// for the embedded one (keygate's default).
func TestCaddyfilesAdaptForEveryStoreAndMode(t *testing.T) {
	defer func(lease int, same bool) { *flagLease, *flagSameHdrs = lease, same }(*flagLease, *flagSameHdrs)
	const redisURL = "redis://127.0.0.1:6379/0"
	for _, tc := range []struct {
		name        string
		withKeygate bool
		redisURL    string
		lease       int
		same        bool
	}{
		{"plain", false, redisURL, 0, false},
		{"plain sending keygate's headers", false, redisURL, 0, true},
		{"keygate on Redis", true, redisURL, 0, false},
		{"keygate on Redis with leases", true, redisURL, 64, false},
		{"keygate on its embedded store", true, "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			*flagLease, *flagSameHdrs = tc.lease, tc.same
			body := caddyfile(tc.withKeygate, "127.0.0.1:8080", "127.0.0.1:2999", tc.redisURL, "127.0.0.1:9000", "")
			out, warnings, err := caddyfileadapter.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(body), nil)
			if err != nil || len(warnings) > 0 {
				t.Fatalf("adapting:\n%s\nerr %v, warnings %v", body, err, warnings)
			}
			var cfg struct {
				Apps map[string]json.RawMessage `json:"apps"`
			}
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			app, hasApp := cfg.Apps["keygate"]
			switch {
			case tc.withKeygate && tc.redisURL != "":
				if !strings.Contains(string(app), `"redis":"`+redisURL+`"`) {
					t.Errorf("keygate app %s: want the Redis store %s", app, redisURL)
				}
			case hasApp && strings.Contains(string(app), "redis"):
				t.Errorf("keygate app %s: want no Redis store", app)
			}
			handlers := strings.Count(string(out), `"handler":"keygate"`)
			if want := map[bool]int{true: len(routes)}[tc.withKeygate]; handlers != want {
				t.Errorf("%d keygate handlers, want %d", handlers, want)
			}
			for _, h := range []string{"Ratelimit-Policy", "X-Keygate-Key-Id"} {
				if sent := strings.Contains(string(out), h); sent != tc.same {
					t.Errorf("plain Caddy sets %s: %v, want %v", h, sent, tc.same)
				}
			}
			if leases := strings.Count(string(out), `"lease":64`); tc.lease > 0 && leases != len(routes) || tc.lease == 0 && leases != 0 {
				t.Errorf("%d routes with a lease, want %d", leases, map[bool]int{true: len(routes)}[tc.lease > 0])
			}
		})
	}
}

// -rate-limit-headers reaches every keygate route, and with -same-headers
// plain Caddy sends only the headers of that style.
func TestCaddyfilesFollowRateLimitHeaders(t *testing.T) {
	defer func(headers string, same bool) { *flagHeaders, *flagSameHdrs = headers, same }(*flagHeaders, *flagSameHdrs)
	*flagHeaders, *flagSameHdrs = "x-ratelimit", true
	for _, withKeygate := range []bool{true, false} {
		body := caddyfile(withKeygate, "127.0.0.1:8080", "127.0.0.1:2999", "redis://127.0.0.1:6379/0", "127.0.0.1:9000", "")
		out, warnings, err := caddyfileadapter.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(body), nil)
		if err != nil || len(warnings) > 0 {
			t.Fatalf("adapting:\n%s\nerr %v, warnings %v", body, err, warnings)
		}
		if withKeygate {
			if n := strings.Count(string(out), `"rate_limit_headers":"x-ratelimit"`); n != len(routes) {
				t.Errorf("%d keygate routes with rate_limit_headers x-ratelimit, want %d", n, len(routes))
			}
			continue
		}
		if !strings.Contains(string(out), "X-Ratelimit-Limit") || strings.Contains(string(out), "Ratelimit-Policy") {
			t.Errorf("plain Caddy with -same-headers and x-ratelimit:\n%s", out)
		}
	}
}
