package backend

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/keygate/keygate/internal/problem"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// handleImage serves GET/HEAD /i/<id>.<ext>. Only names the upload handler
// can have produced are opened, so the path can never leave the image
// directory. Images are immutable, hence the year-long cache lifetime.
func (s *Server) handleImage(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	id, ext, ok := strings.Cut(file, ".")
	ctype, known := mimeOfExt[ext]
	if !ok || !known || len(id) != ImageIDLen || !isAlphanumeric(id) {
		problem.Write(w, errNotFound)
		return
	}
	f, err := os.Open(filepath.Join(s.images, id+"."+ext))
	if err != nil {
		if !os.IsNotExist(err) {
			s.log.Error("image: opening", "err", err)
			problem.Write(w, errInternal)
			return
		}
		problem.Write(w, errNotFound)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		problem.Write(w, errNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	// Belt and braces should a browser ever render the bytes as a document.
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	// ServeContent adds Range, If-Modified-Since and HEAD support.
	http.ServeContent(&contentErrors{ResponseWriter: w}, r, "", fi.ModTime(), f)
}

// contentErrors turns http.ServeContent's own refusals, plain text or
// empty, into the backend's problem+json: 416 for a range outside the
// image (its Content-Range, giving the size, kept) and 412 for a failed
// If-Match or If-Unmodified-Since. Nothing refused is cached as the image.
type contentErrors struct {
	http.ResponseWriter
	refused bool
}

func (c *contentErrors) WriteHeader(status int) {
	var p problem.Details
	switch status {
	case http.StatusRequestedRangeNotSatisfiable:
		p = errRange
	case http.StatusPreconditionFailed:
		p = errPrecondition
	default:
		c.ResponseWriter.WriteHeader(status)
		return
	}
	c.refused = true
	c.Header().Del("Cache-Control")
	problem.Write(c.ResponseWriter, p)
}

// Write drops ServeContent's own body of a refusal.
func (c *contentErrors) Write(b []byte) (int, error) {
	if c.refused {
		return len(b), nil
	}
	return c.ResponseWriter.Write(b)
}

// ReadFrom keeps the copy of an image on the real writer's ReadFrom
// (sendfile; server.go's statusRecorder).
func (c *contentErrors) ReadFrom(src io.Reader) (int64, error) {
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok && !c.refused {
		return rf.ReadFrom(src)
	}
	return io.Copy(writerOnly{c}, src)
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *contentErrors) Unwrap() http.ResponseWriter { return c.ResponseWriter }
