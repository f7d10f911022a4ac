package backend

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keygate/keygate/backend/store"
	"github.com/keygate/keygate/internal/problem"
)

// Wrong passcodes are limited per secret, wherever they come from: the
// gateway's limits are per client address (20 an hour per IPv4 address or
// IPv6 /64), over which someone holding a leaked link could spread a
// guessing run (a 6-digit PIN from an IPv6 /48 in under an hour).
const (
	// MaxPasscodeAttempts is how many wrong passcodes a secret takes in a
	// PasscodeAttemptWindow. Then every passcode, the right one too, is
	// refused with 429 and Retry-After until the window ends: were the
	// right one let through, the lock would not stop guessing.
	MaxPasscodeAttempts = 5
	// PasscodeAttemptWindow is how long the count of a secret's wrong
	// passcodes lasts, from the first attempt while none is counted.
	PasscodeAttemptWindow = 15 * time.Minute

	// releaseTimeout bounds giving a right passcode's reservation back.
	releaseTimeout = 2 * time.Second
)

var (
	errNoPasscode  = errors.New("passcode required")
	errBadPasscode = errors.New("wrong passcode")
)

// passcodeLocked is authorize's error while a secret's wrong passcodes are
// used up: until is when its window ends.
type passcodeLocked struct{ until time.Time }

func (e *passcodeLocked) Error() string {
	return "too many wrong passcodes until " + e.until.UTC().Format(time.RFC3339)
}

// checkPasscode is the authorize callback of OpenSecret for the secret id
// and the passcode hash the reader gave ("" for none). A secret without a
// passcode costs nothing; a request without a passcode for one that has one
// is errNoPasscode and costs no attempt. Any other first reserves an
// attempt in the store, atomically across replicas: when MaxPasscodeAttempts
// are held it is refused without comparing (passcodeLocked), so of any
// number of concurrent guesses at most MaxPasscodeAttempts are compared.
// A wrong passcode keeps its reservation; the right one gives it back, so
// that the legitimate readers of a secret read many times never lock it.
func (s *Server) checkPasscode(r *http.Request, id, given string) func(store.Secret) error {
	return func(sec store.Secret) error {
		if sec.PasscodeHash == "" {
			return nil
		}
		if given == "" {
			return errNoPasscode
		}
		token, until, err := s.cfg.Store.ReservePasscodeAttempt(r.Context(), id, MaxPasscodeAttempts, PasscodeAttemptWindow)
		if err != nil {
			return err
		}
		if token == "" {
			return &passcodeLocked{until: until}
		}
		a, b := sha256.Sum256([]byte(hexInOneCase(given))), sha256.Sum256([]byte(hexInOneCase(sec.PasscodeHash)))
		if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
			return errBadPasscode
		}
		// Given back even if the reader has left meanwhile; should that fail,
		// the reservation lapses with its window.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), releaseTimeout)
		defer cancel()
		if err := s.cfg.Store.ReleasePasscodeAttempt(ctx, id, token); err != nil {
			s.log.Warn("releasing a passcode attempt", "pattern", r.Pattern, "err", err)
		}
		return nil
	}
}

// writePasscodeLocked answers 429 with Retry-After: the whole seconds, at
// least 1, until the window of wrong passcodes ends.
func (s *Server) writePasscodeLocked(w http.ResponseWriter, locked *passcodeLocked) {
	secs := max(1, int64(math.Ceil(locked.until.Sub(s.cfg.Now()).Seconds())))
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	problem.Write(w, errPasscodeLocked)
}

// hexInOneCase is a passcode hash as it is compared: a SHA-256 in hex (64
// hex digits) in lower case, whatever case the creator's tool wrote it in
// (.NET's Convert.ToHexString writes upper case, the viewer and most tools
// lower); any other form as it was sent.
func hexInOneCase(h string) string {
	if _, err := hex.DecodeString(h); err != nil || len(h) != 2*sha256.Size {
		return h
	}
	return strings.ToLower(h)
}
