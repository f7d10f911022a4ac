package backend_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/keygate/keygate/backend"
	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/redisstore"
	"github.com/keygate/keygate/internal/redistest"
)

// The three requests of the Short Link doc, as written there.
func TestShortLinksDocExamples(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		before := time.Now().UTC().Truncate(time.Second)
		resp, body := e.postJSON("/api/shortlinks", `{"url":"https://example.com","slug":"myslug"}`,
			header("X-API-Key", "YOUR_API_KEY_HERE"))
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		m := decode(t, body)
		if keysOf(m) != "link,message,owner" || m["message"] != "Link saved to your account." {
			t.Fatalf("top level: %s", body)
		}
		link := m["link"].(map[string]any)
		if keysOf(link) != "available,createdAt,guestSessionId,id,lastVisitedAt,ownerId,slug,url,visitCount" {
			t.Fatalf("link members: %s", keysOf(link))
		}
		owner := m["owner"].(map[string]any)
		if keysOf(owner) != "displayName,email,id" {
			t.Fatalf("owner members: %s", keysOf(owner))
		}
		created, err := time.Parse(time.RFC3339, link["createdAt"].(string))
		if err != nil || !strings.HasSuffix(link["createdAt"].(string), "Z") || created.Before(before) || created.After(time.Now().Add(time.Second)) {
			t.Fatalf("createdAt %v (%v)", link["createdAt"], err)
		}
		id, isInt := link["id"].(float64)
		if !isInt || id < 1 || id != float64(int64(id)) || link["slug"] != "myslug" || link["url"] != "https://example.com" ||
			link["ownerId"] != owner["id"] || link["lastVisitedAt"] != nil || link["visitCount"] != float64(0) ||
			link["guestSessionId"] != nil || link["available"] != true {
			t.Fatalf("link: %s", body)
		}
		if owner["email"] != "alice@example.com" || owner["displayName"] != "alice@example.com" {
			t.Fatalf("owner: %s", body)
		}

		resp, body = e.postJSON("/api/shortlinks", `{"url":"https://google.com"}`)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("auto slug: %d %s", resp.StatusCode, body)
		}
		auto := decode(t, body)["link"].(map[string]any)
		if s, _ := auto["slug"].(string); len(s) < 2 || auto["id"].(float64) <= id {
			t.Fatalf("auto slug link: %s", body)
		}

		resp, body = e.postJSON("/api/shortlinks", `{"url":"https://github.com","slug":"github"}`)
		if resp.StatusCode != http.StatusOK || decode(t, body)["link"].(map[string]any)["slug"] != "github" {
			t.Fatalf("custom slug: %d %s", resp.StatusCode, body)
		}
		// The doc's Python example prints /<slug>; the slug redirects.
		resp, _ = e.get("/github", anonymous)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://github.com" {
			t.Fatalf("redirect: %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
}

func TestShortLinkErrors(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		if resp, body := e.postJSON("/api/shortlinks", `{"url":"https://example.com","slug":"taken"}`); resp.StatusCode != 200 {
			t.Fatalf("setup: %d %s", resp.StatusCode, body)
		}
		for _, c := range []struct {
			body   string
			status int
			err    string
		}{
			{`{}`, 400, "URL is required"},
			{`{"url":""}`, 400, "URL is required"},
			{`{"url":"   "}`, 400, "URL is required"},
			{`{"url":null,"slug":"abc"}`, 400, "URL is required"},
			{`{"slug":"abc"}`, 400, "URL is required"},
			{`{"url":"not a url"}`, 400, "Invalid URL"},
			{`{"url":"example.com"}`, 400, "Invalid URL"},
			{`{"url":"/relative"}`, 400, "Invalid URL"},
			{`{"url":"ftp://example.com/file"}`, 400, "Invalid URL"},
			{`{"url":"javascript:alert(1)"}`, 400, "Invalid URL"},
			{`{"url":"data:text/html,<script>alert(1)</script>"}`, 400, "Invalid URL"},
			{`{"url":"https://"}`, 400, "Invalid URL"},
			{`{"url":"https://bank.example@evil.example/"}`, 400, "Invalid URL"},
			{`{"url":"https://example.com/\r\nSet-Cookie: x=1"}`, 400, "Invalid URL"},
			{`{"url":"https://example.com:port/"}`, 400, "Invalid URL"},
			// hosts no browser takes, which a page that puts a link's url in
			// an href would render as markup
			{`{"url":"https://<x>/"}`, 400, "Invalid URL"},
			{`{"url":"https://a\"onmouseover=alert(1)/"}`, 400, "Invalid URL"},
			{`{"url":"https://ex{ample}.com/"}`, 400, "Invalid URL"},
			{`{"url":"https://[fe80::1%25\"onmouseover=\"alert(1)]/"}`, 400, "Invalid URL"}, // an IPv6 zone
			{`{"url":"https://example.com/` + strings.Repeat("a", 5000) + `"}`, 400, "Invalid URL"},
			{`{"url":"https://example.com","slug":"api"}`, 400, "Slug is reserved"},
			{`{"url":"https://example.com","slug":"API"}`, 400, "Slug is reserved"},
			{`{"url":"https://example.com","slug":"admin"}`, 400, "Slug is reserved"},
			{`{"url":"https://example.com","slug":"health"}`, 400, "Slug is reserved"},
			{`{"url":"https://example.com","slug":"healthz"}`, 400, "Slug is reserved"},
			{`{"url":"https://example.com","slug":"i"}`, 400, "Invalid slug"}, // too short before reserved
			{`{"url":"https://example.com","slug":"a"}`, 400, "Invalid slug"},
			{`{"url":"https://example.com","slug":"has space"}`, 400, "Invalid slug"},
			{`{"url":"https://example.com","slug":"a/b"}`, 400, "Invalid slug"},
			{`{"url":"https://example.com","slug":"ünï"}`, 400, "Invalid slug"},
			{`{"url":"https://example.com","slug":"` + strings.Repeat("a", 65) + `"}`, 400, "Invalid slug"},
			{`{"url":"https://other.example","slug":"taken"}`, 409, "Slug already exists"},
			{`not json`, 400, "Invalid JSON body"},
			{`{"url":"https://example.com"} trailing`, 400, "Invalid JSON body"},
			{`{"url":42}`, 400, "Invalid JSON body"},
			{`[]`, 400, "Invalid JSON body"},
			{``, 400, "Invalid JSON body"},
			{`{"url":"https://example.com","pad":"` + strings.Repeat("x", 20<<10) + `"}`, 413, "Request body too large"},
		} {
			resp, body := e.postJSON("/api/shortlinks", c.body)
			if resp.StatusCode != c.status {
				t.Fatalf("%.80s: %d %s, want %d", c.body, resp.StatusCode, body, c.status)
			}
			wantProblem(t, resp, body, c.status, c.err)
		}
	})
}

func TestShortLinkOwners(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		create := func(slug string, opt reqOpt) map[string]any {
			t.Helper()
			resp, body := e.postJSON("/api/shortlinks", `{"url":"https://example.com","slug":"`+slug+`"}`, opt)
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			return decode(t, body)
		}
		a1 := create("a1", asKey("key-a1", "laptop", "team-a"))
		a2 := create("a2", asKey("key-a2", "ci", "team-a"))
		b := create("b1", asKey("key-b", "script", ""))
		b2 := create("b2", asKey("key-b", "script", ""))
		anon := create("anon", anonymous)

		oid := func(m map[string]any) any { return m["link"].(map[string]any)["ownerId"] }
		if oid(a1) != oid(a2) || oid(a1) == oid(b) || oid(b) != oid(b2) {
			t.Fatalf("owner ids: a1 %v a2 %v b %v b2 %v", oid(a1), oid(a2), oid(b), oid(b2))
		}
		ow := a1["owner"].(map[string]any)
		if ow["displayName"] != "team-a" || ow["email"] != nil || ow["id"] != oid(a1) {
			t.Fatalf("owner of a labelled key: %v", ow)
		}
		if ow := b["owner"].(map[string]any); ow["displayName"] != "script" || ow["email"] != nil {
			t.Fatalf("owner of an unlabelled key: %v", ow)
		}
		if anon["owner"] != nil || oid(anon) != nil || anon["message"] != "Link created." {
			t.Fatalf("anonymous: %v", anon)
		}
		// Anonymous wins over key headers that might come along.
		both := create("both", func(r *http.Request) { asKey("key-x", "x", "x")(r); anonymous(r) })
		if both["owner"] != nil {
			t.Fatalf("anonymous with key headers: %v", both)
		}
	})
}

// Of many concurrent creators of one slug exactly one gets 200.
func TestShortLinkSlugRace(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		const n = 24
		codes := make(chan int, n)
		atOnce(n, func(i int) {
			req, _ := http.NewRequest("POST", e.srv.URL+"/api/shortlinks",
				strings.NewReader(fmt.Sprintf(`{"url":"https://racer%d.example","slug":"contested"}`, i)))
			req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
			req.Header.Set("X-Keygate-Key-Id", fmt.Sprintf("key-%d", i))
			resp, err := e.client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		})
		close(codes)
		count := map[int]int{}
		for c := range codes {
			count[c]++
		}
		if count[200] != 1 || count[409] != n-1 {
			t.Fatalf("statuses %v, want one 200 and %d 409", count, n-1)
		}
	})
}

func TestRedirect(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		if resp, body := e.postJSON("/api/shortlinks", `{"url":"https://example.com/path?q=1","slug":"go-here"}`); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		resp, _ := e.do("HEAD", "/go-here", nil, "", anonymous)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://example.com/path?q=1" {
			t.Fatalf("HEAD: %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		for range 3 {
			resp, _ = e.get("/go-here", anonymous)
			if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://example.com/path?q=1" {
				t.Fatalf("GET: %d %q", resp.StatusCode, resp.Header.Get("Location"))
			}
			if !strings.Contains(resp.Header.Get("Cache-Control"), "no-store") {
				t.Fatalf("redirect cacheable: %q", resp.Header.Get("Cache-Control"))
			}
		}
		l, err := e.st.GetLink(context.Background(), "go-here")
		if err != nil || l.VisitCount != 3 || l.LastVisitedAt.IsZero() {
			t.Fatalf("after 3 visits and a HEAD: %+v, %v", l, err)
		}
		for _, p := range []string{"/nope", "/Go-here", "/api", "/ab%20cd"} {
			resp, body := e.get(p, anonymous)
			wantProblem(t, resp, body, http.StatusNotFound, "Link not found")
		}
	})
}

// The gateway matches an unclean path (//, ., ..) as its clean form (Caddy's
// path matchers clean it) and proxies it as the client sent it: the backend
// routes it the same way, not with ServeMux's redirect (which curl and many
// API clients do not follow).
func TestUncleanPathsRouteAsTheGatewayMatchedThem(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		if resp, body := e.postJSON("//api/shortlinks", `{"url":"https://example.com/","slug":"clean-me"}`); resp.StatusCode != 200 {
			t.Fatalf("POST //api/shortlinks: %d %s", resp.StatusCode, body)
		}
		resp, body := e.get("/i/../clean-me", anonymous)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://example.com/" {
			t.Fatalf("GET /i/../clean-me: %d %q %s, want the link's 302", resp.StatusCode, resp.Header.Get("Location"), body)
		}
		resp, body = e.get("/./nope//", anonymous)
		wantProblem(t, resp, body, http.StatusNotFound, "Not found")
	})
}

func TestShorten(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		// The Shorturlx doc's curl request.
		resp, body := e.postJSON("/api/shorten", `{"url": "https://example.com/long-url"}`,
			header("Authorization", "Bearer sk_your_api_key_here"), forwarded("https", "sho.rt"))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		m := decode(t, body)
		slug, _ := m["slug"].(string)
		if keysOf(m) != "createdAt,id,shortUrl,slug,url" || m["shortUrl"] != "https://sho.rt/"+slug || m["url"] != "https://example.com/long-url" {
			t.Fatalf("%s", body)
		}
		resp, _ = e.get("/"+slug, anonymous)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://example.com/long-url" {
			t.Fatalf("redirect: %d", resp.StatusCode)
		}
		// Custom slugs, under either name; the same errors as Short Link.
		resp, body = e.postJSON("/api/shorten", `{"url":"https://example.com","customSlug":"brand"}`, anonymous)
		if resp.StatusCode != http.StatusCreated || decode(t, body)["slug"] != "brand" {
			t.Fatalf("customSlug: %d %s", resp.StatusCode, body)
		}
		resp, body = e.postJSON("/api/shorten", `{"url":"https://example.com","slug":"brand"}`)
		wantProblem(t, resp, body, http.StatusConflict, "Slug already exists")
		resp, body = e.postJSON("/api/shorten", `{}`)
		wantProblem(t, resp, body, http.StatusBadRequest, "URL is required")
		resp, body = e.postJSON("/api/shorten", `{"url":"mailto:x@example.com"}`)
		wantProblem(t, resp, body, http.StatusBadRequest, "Invalid URL")
	})
}

// A store that does not answer (Redis stopped) is a 503 with Retry-After,
// not a 500: the request is worth retrying, and the client is told so.
func TestStoreOutageIs503(t *testing.T) {
	srv, _, e := backendOnItsOwnRedis(t)
	srv.Stop()
	resp, body := e.postJSON("/api/shorten", `{"url":"https://example.com"}`, asKey("k1", "n", "o"))
	wantUnavailable(t, resp, body)
	resp, body = e.get("/AAAAAAAAAAAA")
	wantUnavailable(t, resp, body)
	resp, body = e.get("/healthz")
	wantUnavailable(t, resp, body)
}

// A Redis that answers but does not serve for now (here a replica, as a
// failover leaves one, refusing writes with READONLY) is a 503 too.
func TestStoreNotServingIs503(t *testing.T) {
	srv, st, e := backendOnItsOwnRedis(t)
	// a primary that is not there: the replica keeps serving reads
	if err := srv.Client(t).ReplicaOf(context.Background(), "127.0.0.1", "1").Err(); err != nil {
		t.Fatal(err)
	}
	resp, body := e.postJSON("/api/shorten", `{"url":"https://example.com"}`, asKey("k1", "n", "o"))
	wantUnavailable(t, resp, body)
	// a secret the replica does not hold may have been created on the
	// primary since (a demoted primary after a failover): not a 404
	resp, body = e.get("/api/v1/secrets/AAAAAAAAAAAA", anonymous)
	wantUnavailable(t, resp, body)
	// nor is there a connection free within the timeout
	if !st.Unavailable(fmt.Errorf("waiting: %w", goredis.ErrPoolTimeout)) {
		t.Error("ErrPoolTimeout is not taken for Redis not serving")
	}
	// Redis 6 reports a script's write refused by a replica inside an ERR
	redis6 := redisReply("ERR Error running script (call to f_0123): @user_script:2: @user_script: 2: -READONLY You can't write against a read only replica.")
	if !st.Unavailable(fmt.Errorf("redisstore: reading a secret not found: %w", redis6)) {
		t.Error("Redis 6's READONLY inside a script error is not taken for Redis not serving")
	}
}

// redisReply is an error reply as go-redis returns one (redis.Error).
type redisReply string

func (e redisReply) Error() string { return string(e) }
func (redisReply) RedisError()     {}

// backendOnItsOwnRedis is a backend on a Redis of its own, for tests that
// take it down.
func backendOnItsOwnRedis(t *testing.T) (*redistest.Server, *redisstore.Store, *env) {
	t.Helper()
	srv := redistest.Start(t)
	st, err := redisstore.Open(context.Background(), srv.URL(), "kgbown:", store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return srv, st, newEnvOn(t, st, envOpts{})
}

// wantUnavailable checks for a 503 worth retrying in a second.
func wantUnavailable(t *testing.T, resp *http.Response, body []byte) {
	t.Helper()
	wantProblem(t, resp, body, http.StatusServiceUnavailable, "Storage unavailable")
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1", ra)
	}
}

// A request whose client left while the store worked is no store failure:
// 499 (as the gateway records it), and nothing logged as an error.
func TestClientGoneIsNoStoreError(t *testing.T) {
	var logs bytes.Buffer
	h, err := backend.New(backend.Config{
		Store: newStore(t, "redis", envOpts{}), DataDir: t.TempDir(), UpstreamSecret: testSecret,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/AAAAAAAAAAAA", nil)
	req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
	anonymous(req)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 499 || strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("status %d, want 499; log:\n%s", rec.Code, logs.String())
	}
}

// A JSON body that trickles in is cut off after BodyTimeout with 408 (the
// server's own deadline, minutes, is for images on slow links), and the
// connection closed.
func TestSlowJSONBodyIsCutOff(t *testing.T) {
	// cut off in the middle of the object, and after it (the rest of the
	// body, which must be empty, still to come)
	for _, sent := range []string{`{"url":`, `{"url":"https://example.com"}`} {
		t.Run(sent, func(t *testing.T) { sendSlowJSONBody(t, sent) })
	}
}

// sendSlowJSONBody sends the start of a body of 100 bytes and wants 408
// for it once BodyTimeout is over.
func sendSlowJSONBody(t *testing.T, sent string) {
	e := newEnv(t, "bolt", envOpts{bodyTimeout: 300 * time.Millisecond})
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	_, err = conn.Write([]byte("POST /api/shorten HTTP/1.1\r\nHost: x\r\nX-Keygate-Upstream-Secret: " + testSecret +
		"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + sent))
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	wantProblem(t, resp, body, http.StatusRequestTimeout, "Request Timeout")
	if took := time.Since(start); took > 5*time.Second || !resp.Close {
		t.Errorf("answered after %v, closing the connection: %v", took, resp.Close)
	}
}

// A Redis that drops packets (a partition: every dial hangs) gets a
// request its 503 within one attempt's timeouts, not after go-redis's
// five dials per attempt and its retries.
func TestUnreachableStoreIs503Soon(t *testing.T) {
	rdb := goredis.NewClient(&goredis.Options{
		Addr: "192.0.2.1:6379", // TEST-NET: never dialled
		Dialer: func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
		DialTimeout: 500 * time.Millisecond, ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	e := newEnvOn(t, redisstore.New(rdb, "", store.Config{}), envOpts{})
	start := time.Now()
	resp, body := e.postJSON("/api/shorten", `{"url":"https://example.com"}`, asKey("k1", "n", "o"))
	wantUnavailable(t, resp, body)
	// the budget is 900 ms; generous for a loaded machine (without it,
	// about 3 s here, half a minute with the default 5 s dial timeout)
	if took := time.Since(start); took > 2500*time.Millisecond {
		t.Errorf("503 after %v", took)
	}
}
