// Package backend is the thin HTTP backend behind the keygate gateway: image
// upload (Slink), short links (Short Link, Shorturlx), one-time secrets
// (SecLink) and the ShareX uploader file. It implements business logic only.
// It never sees API keys and never rate-limits: the gateway does both and
// tells the backend who the caller is in X-Keygate-* headers, which the
// backend trusts because every request must carry the shared upstream secret.
//
// Every error is application/problem+json with an "error" member (see
// internal/problem); where a reference doc fixes the {"error": "..."} shape
// and its messages (Short Link), the "error" member carries exactly the
// documented message and status, and the problem members come along as
// extras that such clients ignore.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/internal/problem"
)

// Defaults of Config.
const (
	DefaultMaxUpload int64 = 20 << 20 // 20 MiB per image
	DefaultMaxSecret int64 = 1 << 20  // 1 MiB per encrypted blob
	// DefaultBodyTimeout: the largest body, a 1 MiB secret, at 35 KiB/s
	DefaultBodyTimeout = 30 * time.Second
)

// Config configures a Server.
type Config struct {
	// Store keeps links, secrets and reports. Required.
	Store store.Store
	// DataDir holds uploaded images in DataDir/images. Required.
	DataDir string
	// UpstreamSecret must arrive in X-Keygate-Upstream-Secret on every
	// request (except GET /healthz). Required unless InsecureNoSecret.
	UpstreamSecret string
	// InsecureNoSecret accepts requests without the secret: anyone who can
	// reach the backend may then claim any identity. Local experiments only.
	InsecureNoSecret bool
	// MaxUpload bounds one image, MaxSecret one encrypted blob, in bytes.
	MaxUpload int64
	MaxSecret int64
	// BodyTimeout bounds reading a JSON body (a link, a secret, a
	// report): the HTTP server gives a body minutes, for an image on a slow
	// link, and a body of a few KiB trickling in for that long would hold
	// a connection for nothing. Default DefaultBodyTimeout.
	BodyTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// Server is the backend's http.Handler.
type Server struct {
	cfg       Config
	images    string // directory of uploaded images
	log       *slog.Logger
	mux       *http.ServeMux
	secretSum [32]byte // sha256 of the upstream secret, see auth.go
}

// New checks cfg, creates the image directory and returns the handler.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("backend: Config.Store is required")
	}
	if cfg.UpstreamSecret == "" && !cfg.InsecureNoSecret {
		return nil, errors.New("backend: Config.UpstreamSecret is required (or set InsecureNoSecret)")
	}
	if cfg.UpstreamSecret != "" && cfg.InsecureNoSecret {
		return nil, errors.New("backend: Config.UpstreamSecret and InsecureNoSecret are exclusive")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("backend: Config.DataDir is required")
	}
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = DefaultMaxUpload
	}
	if cfg.MaxSecret <= 0 {
		cfg.MaxSecret = DefaultMaxSecret
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, images: filepath.Join(cfg.DataDir, "images"), log: cfg.Logger}
	if err := os.MkdirAll(s.images, 0o750); err != nil {
		return nil, fmt.Errorf("backend: creating image directory: %w", err)
	}
	removeStaleUploads(s.images, cfg.Now())
	s.secretSum = sum(cfg.UpstreamSecret)
	s.routes()
	return s, nil
}

// routes registers every endpoint. Patterns carry no method so that a wrong
// method gets a problem+json 405 from methods, not ServeMux's text/plain one.
func (s *Server) routes() {
	m := http.NewServeMux()
	m.Handle("/api/external/upload", methods{http.MethodPost: s.handleUpload})
	m.Handle("/api/user/sharex-config", methods{http.MethodGet: s.handleShareXConfig})
	m.Handle("/api/shortlinks", methods{http.MethodPost: s.handleShortLinks})
	m.Handle("/api/shorten", methods{http.MethodPost: s.handleShorten})
	m.Handle("/api/v1/secrets", methods{http.MethodPost: s.handleCreateSecret})
	// No HEAD here: a HEAD must never burn a view_once secret.
	m.Handle("/api/v1/secrets/{id}", methods{http.MethodGet: s.handleGetSecret})
	m.Handle("/api/v1/secrets/{id}/report", methods{http.MethodPost: s.handleReport})
	m.Handle(SharePathPrefix+"{id}", methods{http.MethodGet: s.handleViewer, http.MethodHead: s.handleViewer})
	m.Handle(ImagePathPrefix+"{file}", methods{http.MethodGet: s.handleImage, http.MethodHead: s.handleImage})
	m.Handle("/{slug}", methods{http.MethodGet: s.handleRedirect, http.MethodHead: s.handleRedirect})
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { problem.Write(w, errNotFound) })
	s.mux = m
}

// ServeHTTP checks the upstream secret, then routes. It recovers from panics
// so that a bug answers 500 instead of dropping the connection.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.cfg.Now()
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("panic serving request", "method", r.Method, "pattern", r.Pattern, "panic", v)
			if !rec.wrote {
				problem.Write(rec, errInternal)
			}
		}
		// The pattern, not the path: paths hold secret ids and slugs.
		s.log.Debug("request", "method", r.Method, "pattern", r.Pattern, "status", rec.status,
			"duration", s.cfg.Now().Sub(start))
	}()
	// Route on the path as the gateway matched it: Caddy's path matchers
	// clean it (//, ., ..) and reverse_proxy sends it as the client did.
	// ServeMux would answer an unclean path with a redirect to the clean
	// one (301, or 307 for a POST), which curl and many API clients do not
	// follow.
	if clean := cleanPath(r.URL.Path); clean != r.URL.Path {
		r.URL.Path, r.URL.RawPath = clean, ""
	}
	if r.URL.Path == "/healthz" {
		s.handleHealth(rec, r)
		return
	}
	if !s.fromGateway(r) {
		problem.Write(rec, errNotFromGateway)
		return
	}
	s.mux.ServeHTTP(rec, r)
}

// cleanPath is path.Clean keeping a trailing slash, as Caddy cleans a path
// before matching it (caddyhttp.CleanPath).
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	clean := path.Clean(p)
	if clean != "/" && strings.HasSuffix(p, "/") {
		clean += "/"
	}
	return clean
}

// handleHealth answers 200 while the store answers. It is the one endpoint
// that needs no upstream secret (container health checks call it directly)
// and it reveals nothing.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		problem.Write(w, errMethod)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.cfg.Store.Ping(ctx); err != nil {
		s.log.Warn("health check: store unavailable", "err", err)
		writeUnavailable(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// methods dispatches on the request method and answers 405 with an Allow
// header otherwise.
type methods map[string]http.HandlerFunc

func (m methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h, ok := m[r.Method]; ok {
		h(w, r)
		return
	}
	allow := ""
	for _, meth := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
		if _, ok := m[meth]; ok {
			if allow != "" {
				allow += ", "
			}
			allow += meth
		}
	}
	w.Header().Set("Allow", allow)
	problem.Write(w, errMethod)
}

// statusRecorder remembers the status for the log line and whether anything
// was written, so that panic recovery does not write a second response.
type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.status, r.wrote = http.StatusOK, true
	}
	return r.ResponseWriter.Write(b)
}

// ReadFrom passes a copy into the response to the real writer's ReadFrom,
// which sends a file with sendfile(2): http.ServeContent copies an image
// with io.Copy, which uses the writer's ReadFrom when it has one.
func (r *statusRecorder) ReadFrom(src io.Reader) (int64, error) {
	if !r.wrote {
		r.status, r.wrote = http.StatusOK, true
	}
	if rf, ok := r.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(writerOnly{r.ResponseWriter}, src)
}

// writerOnly hides every method of a writer but Write, so that io.Copy
// does not call the ReadFrom it is called from.
type writerOnly struct{ io.Writer }

// Unwrap lets http.ResponseController reach the real writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
