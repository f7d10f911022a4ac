package backend

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/internal/problem"
)

const (
	// SecretIDLen is the length of a linkId: 62^12 ≈ 3.2e21 values.
	SecretIDLen = 12
	// ViewOnceLifetime bounds how long an unread view_once secret is kept.
	ViewOnceLifetime = 7 * 24 * time.Hour
	// SharePathPrefix also opens the viewer: <base>/s/<linkId>, the
	// shareUrl of earlier versions. shareUrl is <base>/<linkId>, as
	// SecLink's doc has it (handleRedirect).
	SharePathPrefix = "/s/"
	// HeaderPasscodeHash carries the reader's passcode hash; the query
	// parameter passcodeHash is the alternative for clients that cannot set
	// headers.
	HeaderPasscodeHash = "X-Passcode-Hash"

	maxIVLen       = 1024
	maxPasscodeLen = 512
	maxReasonLen   = 2000
	// maxReportBody fits the longest reason however a client escapes it:
	// JSON encoders such as Python's escape non-ASCII as \uXXXX, 12 bytes
	// for a character beyond the BMP.
	maxReportBody = 12*maxReasonLen + 1<<10
	idRetries     = 5
)

// lifetimes maps expiryType to how long the secret lives.
var lifetimes = map[string]time.Duration{
	store.ViewOnce: ViewOnceLifetime,
	store.OneHour:  time.Hour,
	store.OneDay:   24 * time.Hour,
	store.OneWeek:  7 * 24 * time.Hour,
}

type createSecretRequest struct {
	EncryptedBlob *string `json:"encryptedBlob"`
	IV            *string `json:"iv"`
	ExpiryType    *string `json:"expiryType"`
	PasscodeHash  *string `json:"passcodeHash"`
}

type createSecretResponse struct {
	LinkID    string `json:"linkId"`
	ShareURL  string `json:"shareUrl"`
	ExpiresAt int64  `json:"expiresAt"` // Unix ms
}

type secretResponse struct {
	EncryptedBlob string `json:"encryptedBlob"`
	IV            string `json:"iv"`
	ExpiryType    string `json:"expiryType"`
}

func invalidSecret(detail string) problem.Details {
	d := errSecretPayload
	d.Detail = detail
	return d
}

// handleCreateSecret is SecLink's POST /api/v1/secrets. The blob is opaque:
// the client encrypts, the server stores. It is not even required to be
// base64, because the doc's own examples send "...".
func (s *Server) handleCreateSecret(w http.ResponseWriter, r *http.Request) {
	var req createSecretRequest
	// Room for the blob plus JSON framing, iv and passcode hash.
	spec := jsonBody{limit: s.cfg.MaxSecret + 16<<10, tooBig: errSecretTooBig, bad: invalidSecret("The body must be a JSON object.")}
	if !s.readJSON(w, r, spec, &req) {
		return
	}
	switch {
	case req.EncryptedBlob == nil || *req.EncryptedBlob == "":
		problem.Write(w, invalidSecret("encryptedBlob is required."))
		return
	case int64(len(*req.EncryptedBlob)) > s.cfg.MaxSecret:
		problem.Write(w, errSecretTooBig)
		return
	case req.IV == nil || *req.IV == "":
		problem.Write(w, invalidSecret("iv is required."))
		return
	case len(*req.IV) > maxIVLen:
		problem.Write(w, invalidSecret("iv is too long."))
		return
	case req.ExpiryType == nil || *req.ExpiryType == "":
		problem.Write(w, invalidSecret("expiryType is required."))
		return
	}
	lifetime, ok := lifetimes[*req.ExpiryType]
	if !ok {
		problem.Write(w, invalidSecret("expiryType must be one of view_once, 1hour, 24hours, 7days."))
		return
	}
	passcode := ""
	if req.PasscodeHash != nil {
		passcode = *req.PasscodeHash
		if len(passcode) > maxPasscodeLen || !printableASCII(passcode) {
			problem.Write(w, invalidSecret("passcodeHash must be printable ASCII of at most 512 characters."))
			return
		}
	}
	now := s.cfg.Now()
	sec := store.Secret{
		EncryptedBlob: *req.EncryptedBlob, IV: *req.IV, ExpiryType: *req.ExpiryType, PasscodeHash: passcode,
		CreatedAt: now, ExpiresAt: now.Add(lifetime).Truncate(time.Millisecond),
	}
	var err error
	for range idRetries { // a collision needs astronomically bad luck; retry anyway
		sec.ID = newSecretID()
		// shareUrl, <base>/<linkId>, must not be a short link's
		if _, err = s.cfg.Store.GetLink(r.Context(), sec.ID); err == nil {
			err = store.ErrIDTaken
			continue
		} else if !errors.Is(err, store.ErrNotFound) {
			break
		}
		if err = s.cfg.Store.CreateSecret(r.Context(), sec); !errors.Is(err, store.ErrIDTaken) {
			break
		}
	}
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, createSecretResponse{
		LinkID:    sec.ID,
		ShareURL:  baseURL(r) + "/" + sec.ID,
		ExpiresAt: sec.ExpiresAt.UnixMilli(),
	})
}

// errPeek is secretExists's authorize: it stops OpenSecret before a
// view_once secret is consumed.
var errPeek = errors.New("peek")

// secretExists says whether a secret with that id exists or did (a
// view_once secret read, for as long as its tombstone lives), without
// reading it out: its <base>/<linkId> is then taken, for a short link's
// slug too.
func (s *Server) secretExists(ctx context.Context, id string) (bool, error) {
	_, err := s.cfg.Store.OpenSecret(ctx, id, func(store.Secret) error { return errPeek })
	switch {
	case errors.Is(err, errPeek), errors.Is(err, store.ErrGone):
		return true, nil
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	}
	return false, err
}

// handleGetSecret is SecLink's GET /api/v1/secrets/:id. The passcode is
// checked inside the store's OpenSecret, before a view_once secret is
// consumed, so a wrong guess never burns it; and no more than
// MaxPasscodeAttempts wrong ones are taken in a window (passcodes.go).
func (s *Server) handleGetSecret(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !isSecretID(id) {
		problem.Write(w, errSecretMissing)
		return
	}
	given := r.Header.Get(HeaderPasscodeHash)
	if given == "" {
		given = r.URL.Query().Get("passcodeHash")
	}
	sec, err := s.cfg.Store.OpenSecret(r.Context(), id, s.checkPasscode(r, id, given))
	var locked *passcodeLocked
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, secretResponse{EncryptedBlob: sec.EncryptedBlob, IV: sec.IV, ExpiryType: sec.ExpiryType})
	case errors.Is(err, store.ErrNotFound):
		problem.Write(w, errSecretMissing)
	case errors.Is(err, store.ErrGone):
		problem.Write(w, errSecretGone)
	case errors.Is(err, errNoPasscode):
		problem.Write(w, errPasscodeNeed)
	case errors.Is(err, errBadPasscode):
		problem.Write(w, errPasscodeWrong)
	case errors.As(err, &locked):
		s.writePasscodeLocked(w, locked)
	default:
		s.storeError(w, r, err)
	}
}

type reportRequest struct {
	Reason *string `json:"reason"`
}

// handleReport is SecLink's POST /api/v1/secrets/:id/report. The body is
// optional ({"reason": "..."}). Any well-formed id may be reported, also one
// already read or expired: the report is evidence for a human to review.
func (s *Server) handleReport(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !isSecretID(id) {
		problem.Write(w, errSecretMissing)
		return
	}
	var req reportRequest
	spec := jsonBody{limit: maxReportBody, allowEmpty: true, tooBig: errBodyTooBig, bad: invalidSecret("The body must be empty or a JSON object.")}
	if !s.readJSON(w, r, spec, &req) {
		return
	}
	reason := ""
	if req.Reason != nil {
		reason = strings.TrimSpace(*req.Reason)
		if utf8.RuneCountInString(reason) > maxReasonLen {
			problem.Write(w, invalidSecret("reason is too long."))
			return
		}
	}
	who := identity(r)
	reporter := who.KeyID
	if who.Anonymous() {
		reporter = "anonymous"
	}
	err := s.cfg.Store.AddReport(r.Context(), store.Report{
		SecretID: id, Reason: reason, Reporter: reporter, RemoteIP: clientIP(r), CreatedAt: s.cfg.Now().UTC(),
	})
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"message": "Report received."})
}

// clientIP is the client's address as the gateway saw it: the gateway's
// X-Keygate-Client-Ip, else the last X-Forwarded-For entry, the one the
// gateway itself appended (earlier ones are client claims; behind a
// trusted proxy the last is that proxy, so the stack's Caddyfile sends the
// header).
func clientIP(r *http.Request) string {
	if ip := net.ParseIP(strings.TrimSpace(r.Header.Get(HeaderClientIP))); ip != nil {
		return ip.String()
	}
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		parts := strings.Split(xff, ",")
		if ip := net.ParseIP(strings.TrimSpace(parts[len(parts)-1])); ip != nil {
			return ip.String()
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return ""
	}
	return host
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
