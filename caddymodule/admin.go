package keygate

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/keygate/keygate/caddymodule/apikey"
	"github.com/keygate/keygate/caddymodule/store"
	"github.com/keygate/keygate/internal/problem"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves key management under /keygate/ on Caddy's admin endpoint:
//
//	GET    /keygate/keys                list keys
//	POST   /keygate/keys                create a key (the only response that holds it)
//	GET    /keygate/keys/<name>         show one key
//	DELETE /keygate/keys/<name>         delete a key
//	POST   /keygate/keys/<name>/enable  re-enable a disabled key
//	POST   /keygate/keys/<name>/disable revoke a key (every replica, at once)
//	POST   /keygate/keys/<name>/rename  {"name": "<new>"}
//	POST   /keygate/keys/<name>/rotate  new secret, the old one is rejected at once
//
// Errors are problem+json with an "error" member, like the gateway's.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.keygate",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/keygate/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

const (
	maxAdminBody  = 64 << 10
	maxNameLength = 100
	adminTimeout  = 10 * time.Second
	importTimeout = 5 * time.Minute
	// keyIDBytes is the random bytes of a key id, in hex in the id
	keyIDBytes = 8
)

// keyView is a key as the admin API and the CLI show it.
type keyView struct {
	Key        string     `json:"key,omitempty"` // only in the response that creates or rotates it
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	Status     string     `json:"status"` // active, disabled or expired
	Enabled    bool       `json:"enabled"`
	Roles      []string   `json:"roles"`
	Owner      string     `json:"owner,omitempty"`
	RateLimit  string     `json:"rate_limit,omitempty"` // e.g. "10000/1h"
	ExpiresAt  *time.Time `json:"expires_at"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	// Warning: the change was made, but gateways holding leases may admit
	// the key as it was for up to a minute (store.ErrUnannounced)
	Warning string `json:"warning,omitempty"`
}

// deletedView is the answer to a deletion.
type deletedView struct {
	Deleted string `json:"deleted"`
	Warning string `json:"warning,omitempty"` // as keyView's
}

func viewOf(k store.Key, now time.Time) keyView {
	v := keyView{
		ID: k.ID, Name: k.Name, Prefix: k.Prefix, Enabled: k.Enabled, Roles: k.Roles,
		Owner: k.Owner, RateLimit: formatRate(k.RateLimit), CreatedAt: k.CreatedAt,
	}
	if v.Roles == nil {
		v.Roles = []string{}
	}
	if !k.ExpiresAt.IsZero() {
		v.ExpiresAt = &k.ExpiresAt
	}
	if !k.LastUsedAt.IsZero() {
		v.LastUsedAt = &k.LastUsedAt
	}
	switch {
	case !k.Enabled:
		v.Status = "disabled"
	case k.Expired(now):
		v.Status = "expired"
	default:
		v.Status = "active"
	}
	return v
}

// createRequest is the body of POST /keygate/keys.
type createRequest struct {
	Name      string   `json:"name"`
	Expires   string   `json:"expires,omitempty"` // 2026-12-31 (00:00 UTC) or RFC 3339
	Roles     []string `json:"roles,omitempty"`
	Owner     string   `json:"owner,omitempty"`
	RateLimit string   `json:"rate_limit,omitempty"` // e.g. "10000/1h"
}

// renameRequest is the body of POST /keygate/keys/<name>/rename.
type renameRequest struct {
	Name string `json:"name"`
}

// adminError is a failed admin call: rendered as problem+json.
type adminError struct {
	status int
	msg    string
	allow  string // the Allow header of a 405
	key    string // a rotation's new secret, when it may have been made
}

func (e adminError) Error() string { return e.msg }

// write sends e as problem+json, with its Allow header and its key member.
func (e adminError) write(w http.ResponseWriter) {
	if e.allow != "" {
		w.Header().Set("Allow", e.allow)
	}
	title := http.StatusText(e.status)
	problem.WriteValue(w, e.status, struct {
		problem.Details
		Key string `json:"key,omitempty"`
	}{problem.Details{Type: problem.TypeBase + "admin", Title: title, Status: e.status, Detail: e.msg, Error: e.msg}, e.key})
}

func badRequest(format string, args ...any) error {
	return adminError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	status, body, err := a.route(r)
	if err != nil {
		var ae adminError
		switch {
		case errors.As(err, &ae):
		case errors.Is(err, store.ErrNotFound):
			ae = adminError{status: http.StatusNotFound, msg: err.Error()}
		case errors.Is(err, store.ErrNameTaken), errors.Is(err, store.ErrIDTaken), errors.Is(err, store.ErrContended):
			ae = adminError{status: http.StatusConflict, msg: err.Error()}
		default:
			caddy.Log().Named("keygate.admin").Error("admin call failed", zap.Error(err))
			ae = adminError{status: http.StatusServiceUnavailable, msg: "key store unavailable: " + err.Error()}
		}
		ae.write(w)
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(body)
}

// keyActions are the changes POST /keygate/keys/<name>/<action> makes.
var keyActions = []string{"enable", "disable", "rename", "rotate"}

// route dispatches one admin call; it returns the status and body of a
// success.
func (a adminAPI) route(r *http.Request) (int, any, error) {
	app, err := activeApp()
	if err != nil {
		return 0, nil, adminError{status: http.StatusServiceUnavailable, msg: err.Error()}
	}
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	s := app.shared

	// one trailing slash is the path without it, for every path alike (no
	// name holds a '/'): /keygate/keys/x/ was x, /keygate/keys/x/disable/
	// an unknown action
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch path {
	case "/keygate/health":
		return health(ctx, app, r)
	case "/keygate/export":
		return exportKeys(ctx, s, r)
	case "/keygate/import":
		// a budget of its own: thousands of keys, each a few store calls
		ctx, cancel := context.WithTimeout(r.Context(), importTimeout)
		defer cancel()
		return importKeys(ctx, s, r)
	}
	rest, ok := strings.CutPrefix(path, "/keygate/keys")
	if !ok || rest != "" && rest[0] != '/' { // /keygate/keysX is no key's path
		return 0, nil, adminError{status: http.StatusNotFound, msg: "unknown keygate admin path " + r.URL.Path}
	}
	rest = strings.TrimPrefix(rest, "/")
	if rest == "" {
		switch r.Method {
		case http.MethodGet:
			keys, err := s.Keys(ctx)
			if err != nil {
				return 0, nil, err
			}
			now := time.Now()
			views := make([]keyView, 0, len(keys))
			for _, k := range keys {
				views = append(views, viewOf(k, now))
			}
			return http.StatusOK, views, nil
		case http.MethodPost:
			var req createRequest
			if err := decodeBody(r, &req); err != nil {
				return 0, nil, err
			}
			v, err := createKey(ctx, s, req)
			return http.StatusCreated, v, err
		}
		return 0, nil, methodNotAllowed(r, "GET, POST")
	}

	name, action, _ := strings.Cut(rest, "/")
	switch {
	case action == "" && r.Method == http.MethodGet:
		k, err := s.KeyByName(ctx, name)
		return http.StatusOK, viewOf(k, time.Now()), err
	case action == "" && r.Method == http.MethodDelete:
		if err := noBody(r); err != nil {
			return 0, nil, err
		}
		err := s.DeleteKey(ctx, name)
		noteChange(s, err)
		warning, err := unannounced(err)
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, deletedView{Deleted: name, Warning: warning}, nil
	case action == "":
		return 0, nil, methodNotAllowed(r, "GET, DELETE")
	case !slices.Contains(keyActions, action):
		return 0, nil, adminError{status: http.StatusNotFound, msg: fmt.Sprintf("unknown action %q: use enable, disable, rename or rotate", action)}
	case r.Method != http.MethodPost:
		return 0, nil, methodNotAllowed(r, "POST")
	}

	if action != "rename" {
		if err := noBody(r); err != nil {
			return 0, nil, err
		}
	}
	var secret string
	var change func(*store.Key) error
	switch action {
	case "enable", "disable":
		enabled := action == "enable"
		change = func(k *store.Key) error { k.Enabled = enabled; return nil }
	case "rename":
		var req renameRequest
		if err := decodeBody(r, &req); err != nil {
			return 0, nil, err
		}
		if err := validName(req.Name); err != nil {
			return 0, nil, err
		}
		change = func(k *store.Key) error { k.Name = req.Name; return nil }
	case "rotate":
		g, err := apikey.Generate()
		if err != nil {
			return 0, nil, err
		}
		secret = g.Secret
		change = func(k *store.Key) error { k.Hash, k.Prefix = g.Hash, g.Display; return nil }
	}
	k, err := s.UpdateKey(ctx, name, change)
	noteChange(s, err)
	if errors.Is(err, store.ErrUnconfirmed) && secret != "" {
		// still a failure (a script retries it), but the secret is shown:
		// if the rotation was made, it is the only one that works
		caddy.Log().Named("keygate.admin").Error("rotation not confirmed", zap.Error(err))
		return 0, nil, adminError{status: http.StatusServiceUnavailable, key: secret,
			msg: "key store unavailable: " + err.Error() + "; if the key's old secret is refused now, the rotation was made and the secret in key is the one that works; else rotate again"}
	}
	warning, err := unannounced(err)
	if err != nil {
		return 0, nil, err
	}
	v := viewOf(k, time.Now())
	v.Key, v.Warning = secret, warning
	return http.StatusOK, v, nil
}

// noteChange tells this process's gateways that a change, which ended
// with err, changed a key or may have (epochWatch.changedAt). Other errors
// are changes not made (a store down before the change began, a name
// taken): noted, they would keep every key from failing open in an outage.
func noteChange(s *sharedStore, err error) {
	if err == nil || errors.Is(err, store.ErrUnannounced) || errors.Is(err, store.ErrUnconfirmed) {
		s.epochs.noteChange(time.Now())
	}
}

// healthView is GET /keygate/health's answer.
type healthView struct {
	Status string `json:"status"` // "ok"
	Store  string `json:"store"`  // embedded, redis, redis cluster or redis sentinel
}

// health answers GET /keygate/health: 200 once a config with keygate is
// running and its store answers (one call, bounded by the store's
// timeout), else 503; for a container's health probe, which the site's
// routes would count against a limit.
func health(ctx context.Context, app *App, r *http.Request) (int, any, error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return 0, nil, methodNotAllowed(r, "GET, HEAD")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(app.Timeout))
	defer cancel()
	if _, err := app.shared.Epoch(ctx); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, healthView{Status: "ok", Store: app.storeName()}, nil
}

// unannounced takes a change that was made but not announced to gateways
// (store.ErrUnannounced) for a success with a warning: an error would hide
// that the change stands, and lose a rotation's new secret, the one key
// that works now.
func unannounced(err error) (warning string, _ error) {
	if !errors.Is(err, store.ErrUnannounced) {
		return "", err
	}
	caddy.Log().Named("keygate.admin").Warn("key changed, but not announced to gateways", zap.Error(err))
	return store.ErrUnannounced.Error(), nil
}

// createKey validates a creation request and stores the new key.
func createKey(ctx context.Context, s store.Store, req createRequest) (keyView, error) {
	now := time.Now()
	if err := validName(req.Name); err != nil {
		return keyView{}, err
	}
	k := store.Key{Name: req.Name, Enabled: true, CreatedAt: now.UTC().Truncate(time.Millisecond), Owner: req.Owner}
	if err := validLabel("owner", req.Owner); err != nil {
		return keyView{}, err
	}
	for _, role := range req.Roles {
		if !validRole(role) {
			return keyView{}, badRequest("role %q: use lowercase letters, digits and _ . : - only", role)
		}
		k.Roles = append(k.Roles, role)
	}
	if req.Expires != "" {
		t, err := parseExpiry(req.Expires)
		if err != nil {
			return keyView{}, err
		}
		if !t.After(now) {
			return keyView{}, badRequest("expiry %s is in the past", req.Expires)
		}
		k.ExpiresAt = t
	}
	if req.RateLimit != "" {
		p, err := parseRate(req.RateLimit)
		if err != nil {
			return keyView{}, badRequest("%v", err)
		}
		k.RateLimit = p
	}
	var id [keyIDBytes]byte
	if _, err := rand.Read(id[:]); err != nil {
		return keyView{}, err
	}
	k.ID = hex.EncodeToString(id[:])
	g, err := apikey.Generate()
	if err != nil {
		return keyView{}, err
	}
	k.Hash, k.Prefix = g.Hash, g.Display
	if err := s.CreateKey(ctx, k); err != nil {
		return keyView{}, err
	}
	k.Revision = 1
	v := viewOf(k, now)
	v.Key = g.Secret
	return v, nil
}

// parseExpiry reads a date (meaning 00:00 UTC that day, as Shlink does) or
// an RFC 3339 time, not after the year 9999 in UTC: past it (as
// 9999-12-31T23:00:00-01:00 is) a time has no RFC 3339 form to store.
func parseExpiry(s string) (time.Time, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		t, err = time.Parse(time.RFC3339, s)
		t = t.UTC()
	}
	switch {
	case err != nil:
		return time.Time{}, badRequest("expiry %q is neither a date (2026-12-31) nor an RFC 3339 time (2026-12-31T23:59:59Z)", s)
	case t.Year() > 9999:
		return time.Time{}, badRequest("expiry %q is after the year 9999 (UTC)", s)
	}
	// milliseconds, as Redis keeps it: both stores answer the same
	return t.Truncate(time.Millisecond), nil
}

// validName accepts names that are safe in a URL path segment, a header
// value and a terminal: printable ASCII without '/', no surrounding spaces,
// not "." or ".." (the admin API's router would resolve them as path
// segments, so such a key could never be managed again).
func validName(name string) error {
	if name == "" {
		return badRequest("a name is required")
	}
	if name != strings.TrimSpace(name) || strings.Contains(name, "/") {
		return badRequest("name %q: no surrounding spaces and no '/'", name)
	}
	if name == "." || name == ".." {
		return badRequest("name %q: a name may not be . or ..", name)
	}
	return validLabel("name", name)
}

func validLabel(what, s string) error {
	if len(s) > maxNameLength {
		return badRequest("%s is longer than %d characters", what, maxNameLength)
	}
	if !allBytes(s, printableASCII) {
		return badRequest("%s %q: printable ASCII characters only", what, s)
	}
	return nil
}

// printableASCII is a byte of a name, an owner or a route's 429 text.
func printableASCII(c byte) bool { return c >= 0x20 && c <= 0x7e }

func validRole(role string) bool {
	return role != "" && len(role) <= maxNameLength && allBytes(role, func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("_.:-", c) >= 0
	})
}

// decodeBody reads r's body, one JSON object of at most maxAdminBody bytes
// and nothing after it, into v, a pointer to a struct whose json tags name
// its members exactly: Go's decoder would take "NAME" for "name" and the
// last of a repeated member, and a typo'd or doubled field would pass
// unnoticed.
func decodeBody(r *http.Request, v any) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("a JSON object is required as the body")
	}
	return decodeObject(body, v)
}

// noBody checks that a call that takes no body has none: nothing, or an
// empty JSON object (what JSON clients send by default). A body that says
// something would be ignored, so it is refused, as an unknown member is.
func noBody(r *http.Request) error {
	body, err := readBody(r)
	if err != nil || len(bytes.TrimSpace(body)) == 0 {
		return err
	}
	return decodeObject(body, &struct{}{})
}

// readBody reads an admin call's body, up to maxAdminBody.
func readBody(r *http.Request) ([]byte, error) { return readBodyUpTo(r, maxAdminBody) }

// readBodyUpTo reads r's body, up to limit bytes (413 past it).
func readBodyUpTo(r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, badRequest("reading the body: %v", err)
	}
	if int64(len(body)) > limit {
		return nil, adminError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("the body is larger than %d bytes", limit)}
	}
	return body, nil
}

// decodeObject decodes body, one JSON object and nothing after it, into
// the struct v points to.
func decodeObject(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil { // unknown members: exactMembers
		return badRequest("invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("invalid JSON body: more after the object")
	}
	return exactMembers(body, v)
}

// exactMembers checks that the members of the JSON object body are each
// named exactly as a json tag of the struct v points to, and appear once.
func exactMembers(body []byte, v any) error {
	known := map[string]bool{}
	t := reflect.TypeOf(v).Elem()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		known[name] = true
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.Token() // the object's '{': Decode read it whole already
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return badRequest("invalid JSON body: %v", err)
		}
		name, _ := tok.(string)
		switch {
		case !known[name]:
			return badRequest("invalid JSON body: unknown field %q", name)
		case seen[name]:
			return badRequest("invalid JSON body: field %q given twice", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return badRequest("invalid JSON body: %v", err)
		}
	}
	return nil
}

// methodNotAllowed is the 405 of r, whose path allows the methods allow.
func methodNotAllowed(r *http.Request, allow string) error {
	return adminError{status: http.StatusMethodNotAllowed, msg: "method " + r.Method + " not allowed on " + r.URL.Path, allow: allow}
}

// activeApp finds the keygate app of the running config.
func activeApp() (*App, error) {
	app, err := caddy.ActiveContext().AppIfConfigured("keygate")
	if err != nil || app == nil {
		return nil, errAppNotRunning
	}
	return app.(*App), nil
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
