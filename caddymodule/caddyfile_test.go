package keygate

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/keygate/keygate/caddymodule/store"
)

// The operator's Caddyfile from the README must adapt, outside route blocks.
const exampleCaddyfile = `{
	admin localhost:2019
	keygate {
		redis redis://127.0.0.1:6379/0
		on_store_error closed
	}
}
:8080 {
	handle /api/* {
		keygate {
			rate_limit 100 10m
			roles upload
		}
		reverse_proxy 127.0.0.1:8081
	}
	handle {
		keygate {
			anonymous 20 1h
			rate_limit 100 10m
		}
		reverse_proxy 127.0.0.1:8081
	}
	handle_errors {
		keygate_errors
	}
}
`

func TestCaddyfileAdapts(t *testing.T) {
	out, warnings, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(exampleCaddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	var app App
	if err := json.Unmarshal(cfg.Apps["keygate"], &app); err != nil || app.Redis != "redis://127.0.0.1:6379/0" || app.OnStoreError != "closed" {
		t.Fatalf("keygate app = %s (%v)", cfg.Apps["keygate"], err)
	}
	js := string(out)
	for _, want := range []string{
		`"handler":"keygate"`, `"rate_limit":{"requests":100,"window":600000000000}`, `"roles":["upload"]`,
		`"anonymous":{"requests":20,"window":3600000000000}`, `"handler":"keygate_errors"`,
	} {
		if !strings.Contains(js, want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, js)
		}
	}
	// keygate runs before reverse_proxy in each route without a route block
	if strings.Index(js, `"handler":"keygate"`) > strings.Index(js, `"handler":"reverse_proxy"`) {
		t.Error("keygate is ordered after reverse_proxy")
	}
}

func TestCaddyfileLease(t *testing.T) {
	out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(":80 {\n\tkeygate {\n\t\trate_limit 5 1m\n\t\tlease 64\n\t}\n}\n"), nil)
	if err != nil || !strings.Contains(string(out), `"lease":64`) {
		t.Fatalf("lease did not adapt: %v\n%s", err, out)
	}
}

func TestCaddyfileRateLimitHeaders(t *testing.T) {
	out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(":80 {\n\tkeygate {\n\t\trate_limit 5 1m\n\t\trate_limit_headers x-ratelimit\n\t}\n}\n"), nil)
	if err != nil || !strings.Contains(string(out), `"rate_limit_headers":"x-ratelimit"`) {
		t.Fatalf("rate_limit_headers did not adapt: %v\n%s", err, out)
	}
}

func TestCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ name, site, want string }{
		{"unknown subdirective", "keygate {\n\tlimit 5 1m\n}", "unrecognized keygate subdirective"},
		{"bad requests", "keygate {\n\trate_limit many 1m\n}", "positive whole number"},
		{"bad window", "keygate {\n\tanonymous 5 soon\n}", "bad window"},
		{"huge requests", "keygate {\n\trate_limit 1000000000000001 1m\n}", "from 1 to 1000000000000000"},
		{"short window", "keygate {\n\tanonymous 5 500us\n}", "at least 1ms"},
		{"window not whole ms", "keygate {\n\trate_limit 5 1500us\n}", "whole milliseconds"},
		{"bad algorithm", "keygate {\n\talgorithm token_bucket\n}", "sliding_window or sliding_log"},
		{"missing args", "keygate {\n\trate_limit 5\n}", "wrong argument count"},
		{"bad lease", "keygate {\n\tlease lots\n}", "whole number of requests"},
		{"huge lease", "keygate {\n\tlease 1000001\n}", "at most 1000000"},
		{"bad rate_limit_headers", "keygate {\n\trate_limit_headers draft\n}", "rate_limit_headers must be both, x-ratelimit, ietf or none"},
		{"two rate_limit_headers", "keygate {\n\trate_limit_headers ietf x-ratelimit\n}", "wrong argument count"},
		{"role never held", "keygate {\n\troles Upload\n}", `role "Upload" can never match`},
		{"roles with anonymous", "keygate {\n\troles upload\n\tanonymous 20 1h\n}", "roles and anonymous exclude each other"},
		// the last would silently win (roles add up instead)
		{"two rate_limits", "keygate {\n\trate_limit 5 1m\n\trate_limit 6 1m\n}", "rate_limit is given more than once"},
		{"two leases", "keygate {\n\tlease 8\n\tlease 64\n}", "lease is given more than once"},
		{"zone with a brace", "keygate {\n\tzone {k:x}\n}", "lowercase letters, digits and _ . - only"},
		{"zone in capitals", "keygate {\n\tzone Shortlink\n}", "lowercase letters, digits and _ . - only"},
		{"zone without a name", "keygate {\n\tzone\n}", "wrong argument count"},
		{"rate_limit_message with a control character", "keygate {\n\trate_limit_message \"a\tb\"\n}", "printable ASCII"},
		{"ignore_key_limits with an argument", "keygate {\n\tignore_key_limits yes\n}", "wrong argument count"},
		{"keygate_errors with a block", "handle_errors {\n\tkeygate_errors {\n\t\tverbose\n\t}\n}", "keygate_errors takes no block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(":80 {\n"+tc.site+"\n}\n"), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	// a second block would replace the first (Caddy keeps the last)
	_, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt(
		[]byte("{\n\tkeygate {\n\t\tredis redis://r:6379\n\t}\n\tkeygate {\n\t\ton_store_error open\n\t}\n}\n:80\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "more than once") {
		t.Errorf("two keygate global options: %v, want an error", err)
	}
	for global, want := range map[string]string{
		"on_store_error maybe": "closed or open",
		"redis_cluster maybe":  "true or false",
		"redis_cluster true 1": "wrong argument count",
		"redis_sentinel":       "wrong argument count",
		"redis redis://a b":    "wrong argument count",
		"timeout 0s":           "bad duration",
		"timeout 500us":        "timeout 500µs is below 1ms",
		"redis redis://a:6379\n\t\tredis redis://b:6379": "redis is given more than once",
		"unknown_global_option ":                         "unrecognized keygate option",
	} {
		_, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte("{\n\tkeygate {\n\t\t"+global+"\n\t}\n}\n:80\n"), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want it to mention %q", global, err, want)
		}
	}
}

// redis_cluster and redis_sentinel adapt to the app's fields, need a URL,
// and exclude each other.
func TestCaddyfileRedisClusterAndSentinel(t *testing.T) {
	for option, want := range map[string]string{
		"redis_cluster":           `"redis_cluster":true`,
		"redis_cluster true":      `"redis_cluster":true`,
		"redis_sentinel mymaster": `"redis_sentinel":"mymaster"`,
		// what the stack's Caddyfile gives with its variables unset
		"redis_cluster false": `"redis":"redis://node1:6379?addr=node2:6379"}`,
		// with KEYGATE_REDIS_CLUSTER set to nothing (Caddy's default applies
		// only to a variable unset): off, as the backend takes it
		`redis_cluster ""`:                          `"redis":"redis://node1:6379?addr=node2:6379"}`,
		`redis_sentinel ""`:                         `"redis":"redis://node1:6379?addr=node2:6379"}`,
		"redis_cluster false\n\t\tredis_sentinel m": `"redis_sentinel":"m"`,
	} {
		out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte("{\n\tkeygate {\n\t\tredis redis://node1:6379?addr=node2:6379\n\t\t"+option+"\n\t}\n}\n:80\n"), nil)
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s did not adapt to %s: %v\n%s", option, want, err, out)
		}
	}
	// in JSON a bare number is nanoseconds: 500 meant as 500ms would time
	// out every store call
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := (&App{Timeout: 500}).Provision(ctx); err == nil || !strings.Contains(err.Error(), `timeout 500ns is below 1ms (in JSON a bare number is nanoseconds: write "500ms")`) {
		t.Errorf(`"timeout": 500: %v`, err)
	}
	for app, want := range map[*App]string{
		{RedisCluster: true}:        "redis_cluster needs",
		{RedisSentinel: "mymaster"}: "redis_sentinel needs",
		{Redis: "redis://a:1", RedisCluster: true, RedisSentinel: "m"}: "exclude each other",
	} {
		app.OnStoreError = storeErrorClosed
		if err := app.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want it to mention %q", app, err, want)
		}
	}
}

// The JSON config is held to what the Caddyfile is.
func TestHandlerValidate(t *testing.T) {
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{Algorithm: store.SlidingWindow, Roles: []string{"upload", "Admin"}}, `role "Admin" can never match`},
		{Handler{Algorithm: store.SlidingWindow, Lease: maxLease + 1}, "lease must be 0 to 1000000"},
		{Handler{Algorithm: store.SlidingWindow, Lease: -1}, "lease must be 0 to 1000000"},
		{Handler{Algorithm: store.SlidingWindow, RateLimitHeaders: "X-RateLimit"}, "rate_limit_headers must be"},
		{Handler{Algorithm: store.SlidingWindow, Roles: []string{"upload"}, Anonymous: &Rate{Requests: 20, Window: caddy.Duration(time.Hour)}}, "roles and anonymous exclude each other"},
	} {
		if err := tc.h.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want it to mention %q", tc.h, err, tc.want)
		}
	}
	if err := (&Handler{Algorithm: store.SlidingLog, Roles: []string{"upload", "ci:deploy"}, Lease: maxLease}).Validate(); err != nil {
		t.Errorf("a valid handler: %v", err)
	}
}
