package backend_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/backend"
	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/backend/store/boltstore"
	"github.com/keygate/keygate/backend/store/redisstore"
	"github.com/keygate/keygate/internal/problem"
	"github.com/keygate/keygate/internal/redistest"
)

const testSecret = "upstream-secret-for-tests"

// env is one backend behind an httptest.Server with a real store.
type env struct {
	t       *testing.T
	srv     *httptest.Server
	client  *http.Client // does not follow redirects
	st      store.Store
	dataDir string
}

type envOpts struct {
	maxUpload, maxSecret int64
	bodyTimeout          time.Duration
	boltCfg              store.Config
}

// storeKinds are the stores every HTTP test runs against.
var storeKinds = []string{"bolt", "redis"}

var (
	redisOnce sync.Once
	redisSrv  *redistest.Server
	redisN    atomic.Int64
)

// sharedRedis starts one redis-server for the whole test binary; stores
// are kept apart by prefix. TestMain stops it.
func sharedRedis(t *testing.T) *redistest.Server {
	redisOnce.Do(func() { redisSrv = redistest.Start(&mainTB{T: t}) })
	if redisSrv == nil { // Start failed the test that first asked: each after fails too
		t.Fatal("the shared redis-server did not start (see the first test that needed it)")
	}
	return redisSrv
}

func newStore(t *testing.T, kind string, o envOpts) store.Store {
	t.Helper()
	var (
		st  store.Store
		err error
	)
	switch kind {
	case "bolt":
		st, err = boltstore.Open(filepath.Join(t.TempDir(), "backend.db"), boltstore.Options{Config: o.boltCfg})
	case "redis":
		st, err = redisstore.Open(context.Background(), sharedRedis(t).URL(), fmt.Sprintf("kgbhttp%d:", redisN.Add(1)), store.Config{})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func newEnv(t *testing.T, kind string, o envOpts) *env {
	t.Helper()
	return newEnvOn(t, newStore(t, kind, o), o)
}

// newEnvOn is a backend on the store st.
func newEnvOn(t *testing.T, st store.Store, o envOpts) *env {
	t.Helper()
	dir := t.TempDir()
	h, err := backend.New(backend.Config{
		Store: st, DataDir: dir, UpstreamSecret: testSecret,
		MaxUpload: o.maxUpload, MaxSecret: o.maxSecret, BodyTimeout: o.bodyTimeout,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	client := *srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &env{t: t, srv: srv, client: &client, st: st, dataDir: dir}
}

// eachStore runs fn against a fresh backend on every store kind.
func eachStore(t *testing.T, fn func(t *testing.T, e *env)) {
	eachStoreOpts(t, envOpts{}, fn)
}

func eachStoreOpts(t *testing.T, o envOpts, fn func(t *testing.T, e *env)) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) { fn(t, newEnv(t, kind, o)) })
	}
}

// reqOpt adjusts a request before it is sent.
type reqOpt func(*http.Request)

// asKey sends the identity headers the gateway would for a key.
func asKey(id, name, owner string) reqOpt {
	return func(r *http.Request) {
		r.Header.Set("X-Keygate-Key-Id", id)
		r.Header.Set("X-Keygate-Key-Name", name)
		r.Header.Set("X-Keygate-Roles", "user, uploader")
		r.Header.Set("X-Keygate-Owner", owner)
	}
}

func anonymous(r *http.Request) { r.Header.Set("X-Keygate-Anonymous", "true") }

func noSecret(r *http.Request) { r.Header.Del("X-Keygate-Upstream-Secret") }

func header(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }

func forwarded(proto, host string) reqOpt {
	return func(r *http.Request) {
		r.Header.Set("X-Forwarded-Proto", proto)
		r.Header.Set("X-Forwarded-Host", host)
	}
}

// defaultKey is who calls unless a test says otherwise.
var defaultKey = asKey("key-1", "ShareX Upload Key", "alice@example.com")

// do sends a request through the gateway's contract (secret + identity) and
// returns the response with its body read.
func (e *env) do(method, path string, body []byte, ctype string, opts ...reqOpt) (*http.Response, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("X-Keygate-Upstream-Secret", testSecret)
	defaultKey(req)
	for _, o := range opts {
		o(req)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, b
}

func (e *env) postJSON(path, body string, opts ...reqOpt) (*http.Response, []byte) {
	e.t.Helper()
	return e.do(http.MethodPost, path, []byte(body), "application/json", opts...)
}

func (e *env) get(path string, opts ...reqOpt) (*http.Response, []byte) {
	e.t.Helper()
	return e.do(http.MethodGet, path, nil, "", opts...)
}

// decode unmarshals body into a map, failing the test on bad JSON.
func decode(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, body)
	}
	return m
}

// wantProblem checks status, problem+json and the error member.
func wantProblem(t *testing.T, resp *http.Response, body []byte, status int, errMsg string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != problem.ContentType {
		t.Fatalf("Content-Type %q, want %q", ct, problem.ContentType)
	}
	m := decode(t, body)
	if m["error"] != errMsg {
		t.Fatalf("error %q, want %q; body %s", m["error"], errMsg, body)
	}
	if m["status"] != float64(status) {
		t.Fatalf("problem status %v, want %d", m["status"], status)
	}
}

// keysOf returns the sorted member names of a JSON object.
func keysOf(m map[string]any) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return strings.Join(ks, ",")
}

// ---- images

func testImage() image.Image {
	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	for x := range 8 {
		img.Set(x, x, color.RGBA{R: 200, A: 255})
	}
	return img
}

func pngBytes(t *testing.T) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, testImage()); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func jpegBytes(t *testing.T) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, testImage(), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gifBytes(t *testing.T) []byte {
	var b bytes.Buffer
	if err := gif.Encode(&b, testImage(), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// webpBytes is a lossless 1x1 WebP (RIFF container, VP8L chunk).
func webpBytes() []byte {
	return []byte{
		'R', 'I', 'F', 'F', 0x1a, 0, 0, 0, 'W', 'E', 'B', 'P',
		'V', 'P', '8', 'L', 0x0d, 0, 0, 0, 0x2f, 0, 0, 0, 0x10, 0x07, 0x10, 0x11, 0x11, 0x88, 0x88, 0xfe, 0x07, 0,
	}
}

// multipartBody builds a form with the given file field, plus an extra
// text field first (clients often send one).
func multipartBody(t *testing.T, field, filename string, content []byte) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	if err := mw.WriteField("note", "hello"); err != nil {
		t.Fatal(err)
	}
	if field != "" {
		fw, err := mw.CreateFormFile(field, filename)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write(content); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), mw.FormDataContentType()
}

// atOnce runs fn(0) … fn(n-1), each in a goroutine of its own, all released
// together once started, and returns when all have: a race between n callers.
func atOnce(n int, fn func(i int)) {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-gate
			fn(i)
		})
	}
	close(gate)
	wg.Wait()
}
