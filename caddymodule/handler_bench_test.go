package keygate

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	runtimemetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/redistest"
)

// benchHandler provisions an App on the given store config and a handler
// with the given limits, outside of a running Caddy, so the benchmark
// measures the handler and its one store call and nothing else.
func benchHandler(b *testing.B, app *App, h *Handler) *Handler {
	b.Helper()
	b.Cleanup(provisionApp(b, app))
	h.logger = zap.NewNop()
	h.attach(app)
	if err := h.Validate(); err != nil {
		b.Fatal(err)
	}
	return h
}

// provisionApp provisions and starts app until done is called. The last App on a
// store ends the state they share (key cache, epochs), so an App
// provisioned after starts cold.
func provisionApp(b *testing.B, app *App) (done func()) {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := app.Provision(ctx); err != nil {
		cancel()
		b.Fatal(err)
	}
	if err := app.Start(); err != nil { // claims the embedded store
		_ = app.Cleanup()
		cancel()
		b.Fatal(err)
	}
	return func() {
		_ = app.Cleanup()
		cancel()
	}
}

// benchRequest builds a request as Caddy's server hands it to a handler.
func benchRequest(headers ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://gateway/api/x", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "203.0.113.9"})
	return r.WithContext(ctx)
}

var okNext = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { return nil })

func benchKeys(b *testing.B, app *App, n int) []string {
	b.Helper()
	secrets := make([]string, n)
	for i := range secrets {
		// names unique across the repeated runs of one benchmark
		name := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.Itoa(i)
		v, err := createKey(context.Background(), app.shared, createRequest{Name: name})
		if err != nil {
			b.Fatal(err)
		}
		secrets[i] = v.Key
	}
	return secrets
}

// serveBench runs the handler b.N times over the given secrets, in
// parallel, and fails on any refusal.
func serveBench(b *testing.B, h *Handler, secrets []string) {
	auth := make([]string, len(secrets))
	for i, s := range secrets {
		auth[i] = "Bearer " + s
	}
	serveRequests(b, h, len(auth), func(i int) string { return auth[i%len(auth)] })
}

// serveRequests runs the handler b.N times, in parallel, each request with
// the Authorization header authorization(i) (none if empty) for i counting
// from 0 in each goroutine, after warm requests unmeasured (the key cache
// and leases warm, as a gateway in steady state has them), and fails on
// any refusal. Each goroutine reuses one request and recorder, their
// headers cleared, so what is measured is the handler's work, not the
// harness's: Caddy's server, too, hands the handler a request it parsed.
func serveRequests(b *testing.B, h *Handler, warm int, authorization func(i int) string) {
	serve := func(w *httptest.ResponseRecorder, r *http.Request, value []string, i int) {
		clear(w.Header())
		clear(r.Header)
		if value[0] = authorization(i); value[0] != "" {
			r.Header["Authorization"] = value
		}
		if err := h.ServeHTTP(w, r, okNext); err != nil {
			b.Fatal(err)
		}
	}
	r, value := benchRequest(), make([]string, 1)
	for i := range warm {
		serve(httptest.NewRecorder(), r, value, i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w, r, value := httptest.NewRecorder(), benchRequest(), make([]string, 1)
		for i := 0; pb.Next(); i++ {
			serve(w, r, value, i)
		}
	})
}

// BenchmarkHandlerRedis is the hot path: a request with a known key, one
// Redis round trip (validate + rate limit), headers in and out.
func BenchmarkHandlerRedis(b *testing.B) {
	eachHotPath(b, func(b *testing.B, app *App, lease int64, alg store.Algorithm) {
		h := benchHandler(b, app, &Handler{RateLimit: benchRate(), Algorithm: alg, Lease: lease})
		serveBench(b, h, benchKeys(b, app, 100))
	})
}

// BenchmarkHandlerAnonymousRedis is the hot path of a request without a
// key on a route with an anonymous limit: every request from one client IP,
// as in the load benchmark's anonymous rows.
func BenchmarkHandlerAnonymousRedis(b *testing.B) {
	eachHotPath(b, func(b *testing.B, app *App, lease int64, alg store.Algorithm) {
		h := benchHandler(b, app, &Handler{Anonymous: benchRate(), Algorithm: alg, Lease: lease})
		serveRequests(b, h, 1, func(int) string { return "" })
	})
}

// BenchmarkHandlerEmbedded is the hot path on keygate's default store:
// keys and limits in process, no network, so what it measures is keygate's
// own work per request (key cache, limiter, headers, metrics). Keyed: 100
// keys; anonymous: one client IP.
func BenchmarkHandlerEmbedded(b *testing.B) {
	for _, alg := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		b.Run(string(alg)+"/keyed", func(b *testing.B) {
			app := &App{}
			h := benchHandler(b, app, &Handler{RateLimit: benchRate(), Algorithm: alg})
			serveBench(b, h, benchKeys(b, app, 100))
		})
		b.Run(string(alg)+"/anonymous", func(b *testing.B) {
			h := benchHandler(b, &App{}, &Handler{Anonymous: benchRate(), Algorithm: alg})
			serveRequests(b, h, 1, func(int) string { return "" })
		})
	}
}

// benchApp is an App on srv, not yet provisioned.
func benchApp(srv *redistest.Server) *App {
	return &App{Redis: srv.URL(), Timeout: caddy.Duration(time.Second)}
}

// benchRate is a limit no benchmark reaches.
func benchRate() *Rate { return &Rate{Requests: 1 << 40, Window: caddy.Duration(time.Hour)} }

// eachHotPath runs bench once per algorithm, without leases and with
// lease 64, each on an App of its own on one real Redis.
func eachHotPath(b *testing.B, bench func(b *testing.B, app *App, lease int64, alg store.Algorithm)) {
	srv := redistest.Start(b)
	for _, lease := range []int64{0, 64} {
		for _, alg := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
			b.Run(fmt.Sprintf("%s/lease%d", alg, lease), func(b *testing.B) {
				bench(b, benchApp(srv), lease, alg)
			})
		}
	}
}

// BenchmarkMemoryPerKey is what a gateway keeps in memory for each key it
// has seen (its key cache entry, identity and record) and, with leases, for
// each key's lease: the live heap after one request of each of memoryKeys
// keys through a cold handler, less before, per key; and of it, what every
// GC cycle scans (scan-B/key: objects that hold pointers). ns/op is the
// requests' time.
func BenchmarkMemoryPerKey(b *testing.B) {
	const memoryKeys = 2000
	srv := redistest.Start(b)
	app := benchApp(srv)
	done := provisionApp(b, app)
	secrets := benchKeys(b, app, memoryKeys)
	done()
	for _, lease := range []int64{0, 64} {
		b.Run(fmt.Sprintf("lease%d", lease), func(b *testing.B) {
			var bytes, objects, scanned int64
			for range b.N {
				b.StopTimer()
				app := benchApp(srv)
				done := provisionApp(b, app)
				h := &Handler{RateLimit: benchRate(), Lease: lease, logger: zap.NewNop()}
				h.attach(app)
				// a made-up key first: the store's connection is then open
				// before the count starts
				_ = h.ServeHTTP(httptest.NewRecorder(), benchRequest("X-API-Key", "sk_"+strings.Repeat("0", 48)), okNext)
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				scanBefore := scannableHeap()
				b.StartTimer()
				for _, s := range secrets {
					if err := h.ServeHTTP(httptest.NewRecorder(), benchRequest("Authorization", "Bearer "+s), okNext); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&after)
				runtime.KeepAlive(h)
				bytes += int64(after.HeapAlloc) - int64(before.HeapAlloc)
				objects += int64(after.HeapObjects) - int64(before.HeapObjects)
				scanned += scannableHeap() - scanBefore
				done()
				b.StartTimer()
			}
			b.ReportMetric(float64(bytes)/float64(b.N*memoryKeys), "B/key")
			b.ReportMetric(float64(objects)/float64(b.N*memoryKeys), "objects/key")
			b.ReportMetric(float64(scanned)/float64(b.N*memoryKeys), "scan-B/key")
		})
	}
}

// scannableHeap is the heap the last GC cycle found holding pointers: what
// each cycle scans.
func scannableHeap() int64 {
	sample := []runtimemetrics.Sample{{Name: "/gc/scan/heap:bytes"}}
	runtimemetrics.Read(sample)
	return int64(sample[0].Value.Uint64())
}

// BenchmarkHandlerRejectUnknownKey measures what a flood of made-up keys
// costs: after the first lookup, the negative cache answers.
func BenchmarkHandlerRejectUnknownKey(b *testing.B) {
	srv := redistest.Start(b)
	app := benchApp(srv)
	h := benchHandler(b, app, &Handler{})
	r := benchRequest("X-API-Key", "sk_"+"0123456789abcdef0123456789abcdef0123456789abcdef")
	_ = h.ServeHTTP(httptest.NewRecorder(), r, okNext)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r := benchRequest("X-API-Key", "sk_"+"0123456789abcdef0123456789abcdef0123456789abcdef")
		if err := h.ServeHTTP(httptest.NewRecorder(), r, okNext); err == nil {
			b.Fatal("unknown key accepted")
		}
	}
}

// BenchmarkCredentialAndIdentity is the CPU-only part of the hot path:
// parsing the credential, hashing it, stripping and injecting headers.
func BenchmarkCredentialAndIdentity(b *testing.B) {
	ident := newIdentity(&store.Key{ID: "0123456789abcdef", Name: "bench", Roles: []string{"upload", "read"}, Revision: 1})
	repl := caddy.NewReplacer()
	h := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		h["Authorization"] = []string{"Bearer sk_0123456789abcdef0123456789abcdef0123456789abcdef"}
		h["X-Keygate-Key-Id"] = []string{"spoofed"}
		stripIdentityHeaders(h)
		c := credentialFrom(h)
		c.strip(h)
		if !c.present() || !apikey.WellFormed(c.key) {
			b.Fatal("no well-formed credential")
		}
		_ = apikey.Sum(c.key)
		ident.inject(h, repl)
	}
}

// BenchmarkRateLimitHeaders writes the headers every limited response
// carries.
func BenchmarkRateLimitHeaders(b *testing.B) {
	p := store.Policy{Limit: 100, Window: 10 * time.Minute}
	policy := policyHeader(policyNameKey, p)
	now := time.Now()
	d := store.Decision{Allowed: true, Limit: 100, Remaining: 57, Reset: now.Add(412 * time.Second)}
	h := make(http.Header, 8)
	b.ReportAllocs()
	for b.Loop() {
		setRateLimitHeaders(h, sendXRateLimit|sendIETF, policyNameKey, policy, d, now)
	}
}

// BenchmarkLeaseTable is a leased request's work in the gateway, one
// subject from parallel goroutines (the contended case): take, and for one
// request a lease also want and put, the store answering at once
// (oneRequest).
func BenchmarkLeaseTable(b *testing.B) {
	for _, alg := range []store.Algorithm{store.SlidingWindow, store.SlidingLog} {
		b.Run(string(alg), func(b *testing.B) {
			tbl := newLeaseTable(64, alg)
			k := leaseKey{kind: 's', subject: "192.0.2.1", policy: store.Policy{Limit: 1 << 40, Window: time.Hour}}
			var calls atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, called, _ := oneRequest(tbl, k, time.Now()); called {
						calls.Add(1)
					}
				}
			})
			b.ReportMetric(float64(calls.Load())/float64(b.N), "calls/op")
		})
	}
}
