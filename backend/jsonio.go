package backend

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/keygate/keygate/internal/problem"
)

// writeJSON sends v as the response. API answers are per-caller and often
// secret, so nothing is cached on the way.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		problem.Write(w, errInternal)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// jsonBody says how readJSON treats one endpoint's body.
type jsonBody struct {
	limit      int64 // bytes
	allowEmpty bool  // an empty body decodes to the zero value
	tooBig     problem.Details
	bad        problem.Details // malformed JSON
}

// readJSON decodes a JSON value into dst, within Config.BodyTimeout. It
// writes the error response itself and reports whether the caller may go
// on.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, spec jsonBody, dst any) bool {
	limit, tooBig := spec.limit, spec.tooBig
	if r.ContentLength > limit {
		w.Header().Set("Connection", "close")
		problem.Write(w, tooBig)
		return false
	}
	// the next request on the connection gets the server's deadlines again
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout))
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	err := dec.Decode(dst)
	if err == nil {
		// Trailing garbage after the object is a malformed body, not
		// something to ignore silently.
		if err = trailing(dec); err == nil {
			return true
		}
	} else if errors.Is(err, io.EOF) && spec.allowEmpty {
		return true
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		problem.Write(w, tooBig)
	case errors.Is(err, os.ErrDeadlineExceeded): // in the object or after it
		w.Header().Set("Connection", "close") // the rest of the body is not read
		problem.Write(w, errBodyTimeout)
	default:
		problem.Write(w, spec.bad)
	}
	return false
}

// trailing reads what follows the decoded value: nil at the body's end, a
// read's error, or errTrailingData.
func trailing(dec *json.Decoder) error {
	switch _, err := dec.Token(); {
	case err == io.EOF:
		return nil
	case err != nil:
		return err
	}
	return errTrailingData
}

var errTrailingData = errors.New("data after the JSON value")
