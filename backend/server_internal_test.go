package backend

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// readFromWriter is a ResponseWriter with a ReadFrom, as net/http's own
// (which sends files with sendfile), that says whether it was used.
type readFromWriter struct {
	*httptest.ResponseRecorder
	used bool
}

func (w *readFromWriter) ReadFrom(src io.Reader) (int64, error) {
	w.used = true
	return io.Copy(w.ResponseRecorder, src)
}

// The status recorder every request goes through keeps the real writer's
// ReadFrom, which http.ServeContent's copy of an image uses, and records
// the status it implies.
func TestStatusRecorderKeepsReadFrom(t *testing.T) {
	withReadFrom := &readFromWriter{ResponseRecorder: httptest.NewRecorder()}
	without := httptest.NewRecorder()
	for _, c := range []struct {
		real http.ResponseWriter
		body *httptest.ResponseRecorder
	}{{withReadFrom, withReadFrom.ResponseRecorder}, {without, without}} {
		rec := &statusRecorder{ResponseWriter: c.real}
		// ServeContent copies a LimitedReader of the file
		n, err := io.Copy(rec, io.LimitReader(strings.NewReader("image bytes"), 5))
		if err != nil || n != 5 || c.body.Body.String() != "image" {
			t.Fatalf("copy: %d, %v, body %q", n, err, c.body.Body)
		}
		if rec.status != http.StatusOK || !rec.wrote {
			t.Errorf("status %d, wrote %v after the copy", rec.status, rec.wrote)
		}
	}
	if !withReadFrom.used {
		t.Error("the copy did not reach the real writer's ReadFrom")
	}
}
