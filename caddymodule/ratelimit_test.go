package keygate

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/keygate/keygate/caddymodule/store"
)

func TestRateLimitHeaders(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	p := store.Policy{Limit: 100, Window: 10 * time.Minute}
	for _, tc := range []struct {
		name string
		d    store.Decision
		want map[string]string
	}{
		{"allowed", store.Decision{Allowed: true, Limit: 100, Remaining: 57, Reset: now.Add(411500 * time.Millisecond)}, map[string]string{
			"X-RateLimit-Limit":     "100",
			"X-RateLimit-Remaining": "57",
			"X-RateLimit-Reset":     "1700000411500",
			"RateLimit-Policy":      `"key";q=100;w=600`,
			"RateLimit":             `"key";r=57;t=412`,
			"Retry-After":           "",
		}},
		{"refused", store.Decision{Limit: 100, Reset: now.Add(2 * time.Second), RetryAfter: 1001 * time.Millisecond}, map[string]string{
			"X-RateLimit-Remaining": "0",
			"X-RateLimit-Reset":     "1700000002000",
			"RateLimit":             `"key";r=0;t=2`,
			"Retry-After":           "2",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			setRateLimitHeaders(h, sendXRateLimit|sendIETF, policyNameKey, policyHeader(policyNameKey, p), tc.d, now)
			for k, want := range tc.want {
				if got := h.Get(k); got != want {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}
			// The values share one backing array; adding to one header
			// must not overwrite the next.
			h.Add("X-RateLimit-Limit", "extra")
			if got := h.Get("X-RateLimit-Remaining"); got != tc.want["X-RateLimit-Remaining"] {
				t.Errorf("Remaining after Add to Limit: %q", got)
			}
		})
	}
}

// TestRateLimitHeaderStyles checks that rate_limit_headers picks the
// headers sent, and that a 429 says when to retry whatever it picks.
func TestRateLimitHeaderStyles(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	p := store.Policy{Limit: 100, Window: 10 * time.Minute}
	allowed := store.Decision{Allowed: true, Limit: 100, Remaining: 57, Reset: now.Add(time.Minute)}
	refused := store.Decision{Limit: 100, Reset: now.Add(time.Minute), RetryAfter: time.Second}
	xRateLimit := []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
	ietf := []string{"RateLimit-Policy", "RateLimit"}
	for _, tc := range []struct {
		value string
		want  []string
	}{
		{"", append(xRateLimit, ietf...)},
		{RateLimitHeadersBoth, append(xRateLimit, ietf...)},
		{RateLimitHeadersXRateLimit, xRateLimit},
		{RateLimitHeadersIETF, ietf},
		{RateLimitHeadersNone, nil},
	} {
		send, err := rateLimitHeaderSet(tc.value)
		if err != nil {
			t.Fatalf("%q: %v", tc.value, err)
		}
		for _, d := range []store.Decision{allowed, refused} {
			h := http.Header{}
			setRateLimitHeaders(h, send, policyNameKey, policyHeader(policyNameKey, p), d, now)
			want := http.Header{}
			for _, k := range tc.want {
				want.Set(k, h.Get(k))
			}
			if !d.Allowed {
				want.Set("Retry-After", "1")
			}
			if len(h) != len(want) {
				t.Errorf("%q, allowed %v: headers %v, want only %v", tc.value, d.Allowed, h, tc.want)
			}
			for k := range want {
				if h.Get(k) == "" {
					t.Errorf("%q, allowed %v: no %s", tc.value, d.Allowed, k)
				}
			}
		}
	}
	if _, err := rateLimitHeaderSet("X-RateLimit"); err == nil {
		t.Error("rate_limit_headers X-RateLimit accepted")
	}
}

// TestClientSubject checks the anonymous rate-limit subject: one per IPv4
// address (an IPv4-mapped IPv6 address is the same client), one per IPv6
// /64, and one allocation.
func TestClientSubject(t *testing.T) {
	for ip, want := range map[string]string{
		"203.0.113.9":                             "ip:203.0.113.9",
		"::ffff:203.0.113.9":                      "ip:203.0.113.9",
		"2001:db8:1:2:aaaa:bbbb:cccc:dddd":        "ip6:2001:db8:1:2::/64",
		"2001:db8:1:2::1%eth0":                    "ip6:2001:db8:1:2::/64",
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff": "ip6:ffff:ffff:ffff:ffff::/64",
		"not an ip":                               "ip:not an ip",
	} {
		r := benchRequest()
		caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, ip)
		if got := clientSubject(r); got != want {
			t.Errorf("clientSubject(%q) = %q, want %q", ip, got, want)
		}
		if ip == "not an ip" {
			continue
		}
		if n := testing.AllocsPerRun(100, func() { _ = clientSubject(r) }); n != 1 {
			t.Errorf("clientSubject(%q): %v allocations, want 1", ip, n)
		}
	}
}
