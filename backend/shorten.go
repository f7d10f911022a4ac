package backend

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/internal/problem"
)

// Slug rules: 2 to 64 characters of [A-Za-z0-9_-]; case-sensitive.
const (
	minSlugLen = 2
	maxSlugLen = 64
	maxURLLen  = 4096
	// Generated slugs: 62^6 ≈ 5.7e10 values; after a few collisions the
	// length grows so that a crowded space cannot stall creation.
	genSlugLen     = 6
	genSlugRetries = 8
)

// ReservedSlugs are first path segments the backend or the gateway route
// elsewhere, and names kept for future pages. Compared case-insensitively.
var ReservedSlugs = map[string]bool{
	"api": true, "health": true, "healthz": true, "i": true, "s": true,
	"admin": true, "r": true, "static": true, "assets": true, "metrics": true,
	"login": true, "logout": true, "dashboard": true, "keygate": true,
	"favicon": true, "robots": true, "well-known": true,
}

var linkJSONBody = jsonBody{limit: 16 << 10, tooBig: errBodyTooBig, bad: errBadJSON}

// shortenRequest is the body of both POST /api/shortlinks and /api/shorten.
// Pointers tell a missing member from an empty one.
type shortenRequest struct {
	URL  *string `json:"url"`
	Slug *string `json:"slug"`
	// CustomSlug is accepted as a synonym on /api/shorten.
	CustomSlug *string `json:"customSlug"`
}

// linkJSON is a link exactly as the Short Link doc shows it.
type linkJSON struct {
	ID             int64   `json:"id"`
	Slug           string  `json:"slug"`
	URL            string  `json:"url"`
	OwnerID        *int64  `json:"ownerId"`
	CreatedAt      string  `json:"createdAt"`
	LastVisitedAt  *string `json:"lastVisitedAt"`
	VisitCount     int64   `json:"visitCount"`
	GuestSessionID *string `json:"guestSessionId"`
	Available      bool    `json:"available"`
}

type ownerJSON struct {
	ID          int64   `json:"id"`
	Email       *string `json:"email"`
	DisplayName string  `json:"displayName"`
}

type shortLinkResponse struct {
	Link    linkJSON   `json:"link"`
	Owner   *ownerJSON `json:"owner"`
	Message string     `json:"message"`
}

// timestamp formats like the doc: RFC 3339, UTC, whole seconds.
func timestamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func toLinkJSON(l store.Link) linkJSON {
	j := linkJSON{ID: l.ID, Slug: l.Slug, URL: l.URL, CreatedAt: timestamp(l.CreatedAt), VisitCount: l.VisitCount, Available: true}
	if l.OwnerID != 0 {
		j.OwnerID = &l.OwnerID
	}
	if !l.LastVisitedAt.IsZero() {
		v := timestamp(l.LastVisitedAt)
		j.LastVisitedAt = &v
	}
	return j
}

// handleShortLinks is Short Link's POST /api/shortlinks.
func (s *Server) handleShortLinks(w http.ResponseWriter, r *http.Request) {
	l, owner, ok := s.createLink(w, r, false)
	if !ok {
		return
	}
	msg := "Link saved to your account."
	if owner == nil {
		msg = "Link created."
	}
	writeJSON(w, http.StatusOK, shortLinkResponse{Link: toLinkJSON(l), Owner: owner, Message: msg})
}

// shortenResponse is the Shorturlx answer.
type shortenResponse struct {
	ShortURL  string `json:"shortUrl"`
	Slug      string `json:"slug"`
	URL       string `json:"url"`
	ID        int64  `json:"id"`
	CreatedAt string `json:"createdAt"`
}

// handleShorten is Shorturlx's POST /api/shorten.
func (s *Server) handleShorten(w http.ResponseWriter, r *http.Request) {
	l, _, ok := s.createLink(w, r, true)
	if !ok {
		return
	}
	writeJSON(w, http.StatusCreated, shortenResponse{
		ShortURL: baseURL(r) + "/" + l.Slug, Slug: l.Slug, URL: l.URL, ID: l.ID, CreatedAt: timestamp(l.CreatedAt),
	})
}

// createLink validates the body, resolves the owner and stores the link,
// answering errors itself.
func (s *Server) createLink(w http.ResponseWriter, r *http.Request, customSlugOK bool) (store.Link, *ownerJSON, bool) {
	var req shortenRequest
	if !s.readJSON(w, r, linkJSONBody, &req) {
		return store.Link{}, nil, false
	}
	if req.URL == nil || strings.TrimSpace(*req.URL) == "" {
		problem.Write(w, errURLRequired)
		return store.Link{}, nil, false
	}
	target, ok := validTarget(*req.URL)
	if !ok {
		problem.Write(w, errInvalidURL)
		return store.Link{}, nil, false
	}
	slug := ""
	if req.Slug != nil {
		slug = strings.TrimSpace(*req.Slug)
	}
	if slug == "" && customSlugOK && req.CustomSlug != nil {
		slug = strings.TrimSpace(*req.CustomSlug)
	}
	if slug != "" {
		if p, ok := checkSlug(slug); !ok {
			problem.Write(w, p)
			return store.Link{}, nil, false
		}
		// the linkId of a secret an earlier version drew in one case:
		// reserved while the secret or its tombstone is there
		if isSecretID(slug) {
			switch exists, err := s.secretExists(r.Context(), slug); {
			case err != nil:
				s.storeError(w, r, err)
				return store.Link{}, nil, false
			case exists:
				problem.Write(w, errSlugReserved)
				return store.Link{}, nil, false
			}
		}
	}

	id := identity(r)
	var owner *ownerJSON
	if key := id.OwnerKey(); key != "" {
		oid, err := s.cfg.Store.OwnerID(r.Context(), key)
		if err != nil {
			s.storeError(w, r, err)
			return store.Link{}, nil, false
		}
		owner = &ownerJSON{ID: oid, Email: emailOf(id.Owner), DisplayName: id.DisplayName()}
	}
	nl := store.NewLink{Slug: slug, URL: target, CreatedAt: s.cfg.Now()}
	if owner != nil {
		nl.OwnerID = owner.ID
	}
	l, err := s.storeLink(r.Context(), nl)
	switch {
	case errors.Is(err, store.ErrSlugTaken):
		problem.Write(w, errSlugExists)
		return store.Link{}, nil, false
	case err != nil:
		s.storeError(w, r, err)
		return store.Link{}, nil, false
	}
	return l, owner, true
}

// storeLink creates nl, generating a slug when it has none. A chosen slug
// that is taken is the caller's 409; a generated one is simply redrawn.
func (s *Server) storeLink(ctx context.Context, nl store.NewLink) (store.Link, error) {
	if nl.Slug != "" {
		return s.cfg.Store.CreateLink(ctx, nl)
	}
	for i := range genSlugRetries {
		nl.Slug = randomID(genSlugLen + i/2)
		if ReservedSlugs[strings.ToLower(nl.Slug)] {
			continue
		}
		l, err := s.cfg.Store.CreateLink(ctx, nl)
		if !errors.Is(err, store.ErrSlugTaken) {
			return l, err
		}
	}
	return store.Link{}, errors.New("backend: no free generated slug after retries")
}

// checkSlug validates a client-chosen slug.
func checkSlug(slug string) (problem.Details, bool) {
	if !validSlug(slug) {
		return errInvalidSlug, false
	}
	if ReservedSlugs[strings.ToLower(slug)] || isShareURLSlug(slug) {
		// a linkId's shape is SecLink's shareUrl, <base>/<linkId>, for
		// good: a link there, made once a secret is gone (or before one
		// gets the id), would send its readers, and the key in the
		// fragment a redirect carries, elsewhere
		return errSlugReserved, false
	}
	return problem.Details{}, true
}

func validSlug(slug string) bool {
	if len(slug) < minSlugLen || len(slug) > maxSlugLen {
		return false
	}
	for i := 0; i < len(slug); i++ {
		c := slug[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validTarget accepts absolute http(s) URLs with a host and returns their
// normalised form. Credentials are refused: https://bank.example@evil.example
// is a classic way to disguise where a short link goes.
func validTarget(raw string) (string, bool) {
	raw = strings.TrimSpace(raw)
	if len(raw) > maxURLLen || strings.ContainsFunc(raw, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return "", false
	}
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" || u.User != nil || u.Hostname() == "" {
		return "", false
	}
	if u.Scheme = strings.ToLower(u.Scheme); u.Scheme != "http" && u.Scheme != "https" || !validTargetHost(u.Hostname()) {
		return "", false
	}
	if p := u.Port(); p != "" && !isDigits(p) {
		return "", false
	}
	return u.String(), true
}

// validTargetHost accepts an IP address or a name of letters, digits, '-', '_'
// and '.' (and non-ASCII ones: an internationalized name as typed). Go's
// URL parser also takes <, >, " and the like in a host, which no browser
// does, and which a page that puts a link's url in an href would render
// as markup.
func validTargetHost(h string) bool {
	if addr, err := netip.ParseAddr(h); err == nil {
		// a zone is the sender's own interface, no public target's; and
		// Go's parser takes anything in it, markup included
		return addr.Zone() == ""
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c >= 0x80) {
			return false
		}
	}
	return h != ""
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// emailOf returns the owner label when it is a plain e-mail address; the
// gateway's owner is a free-form label, so often there is none.
func emailOf(owner string) *string {
	if owner == "" {
		return nil
	}
	a, err := mail.ParseAddress(owner)
	if err != nil || a.Address != owner {
		return nil
	}
	return &owner
}

// handleRedirect is GET /<slug>: 302 to the target, counting the visit. HEAD
// answers the same without counting, so link checkers do not inflate counts.
func (s *Server) handleRedirect(w http.ResponseWriter, r *http.Request) {
	slug := r.PathValue("slug")
	if !validSlug(slug) || ReservedSlugs[strings.ToLower(slug)] {
		problem.Write(w, errLinkNotFound)
		return
	}
	var (
		l   store.Link
		err error
	)
	if r.Method == http.MethodHead {
		l, err = s.cfg.Store.GetLink(r.Context(), slug)
	} else {
		l, err = s.cfg.Store.VisitLink(r.Context(), slug, s.cfg.Now())
	}
	switch {
	case errors.Is(err, store.ErrNotFound) && isSecretID(slug):
		// no link: perhaps a secret's shareUrl, <base>/<linkId>
		switch exists, err := s.secretExists(r.Context(), slug); {
		case err != nil:
			s.storeError(w, r, err)
		case exists:
			serveViewer(w)
		default:
			problem.Write(w, errLinkNotFound)
		}
		return
	case errors.Is(err, store.ErrNotFound):
		problem.Write(w, errLinkNotFound)
		return
	case err != nil:
		s.storeError(w, r, err)
		return
	}
	// Not cached anywhere: every visit must reach us to be counted.
	w.Header().Set("Cache-Control", "private, no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, l.URL, http.StatusFound)
}

// storeError answers a store failure: the details go to the log, the client
// gets 503 with Retry-After when the store did not answer (Redis down,
// hung, or too slow: worth retrying, and a load balancer may try another
// replica), else a generic 500.
func (s *Server) storeError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		// the client left (the gateway logs it, as 499): nothing to answer
		s.log.Debug("request canceled", "method", r.Method, "pattern", r.Pattern, "err", err)
		w.WriteHeader(statusClientClosedRequest)
		return
	}
	s.log.Error("store error", "method", r.Method, "pattern", r.Pattern, "err", err)
	if s.storeUnreachable(err) {
		writeUnavailable(w)
		return
	}
	problem.Write(w, errInternal)
}

// writeUnavailable answers 503 Storage unavailable, worth retrying in a
// second (a load balancer may try another replica).
func writeUnavailable(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	problem.Write(w, errUnavailable)
}

// statusClientClosedRequest is nginx's and Caddy's 499.
const statusClientClosedRequest = 499

// storeUnreachable says whether err is the store not answering: a network
// error (refused, reset, timed out), a closed connection, or a deadline;
// or, as the store itself tells, not serving for now (store.Unavailabler).
func (s *Server) storeUnreachable(err error) bool {
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) {
		return true
	}
	u, ok := s.cfg.Store.(store.Unavailabler)
	return ok && u.Unavailable(err)
}
