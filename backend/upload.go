package backend

import (
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/keygate/keygate/internal/problem"
)

const (
	// ImagePathPrefix is where uploaded images are served: /i/<id>.<ext>.
	ImagePathPrefix = "/i/"
	// ImageIDLen: 62^20 ≈ 7e35 values, unguessable and collision-free.
	ImageIDLen = 20
	// multipartSlack is what the body may hold besides the image itself:
	// boundaries, part headers, small extra fields.
	multipartSlack = 64 << 10
	sniffLen       = 512
)

// imageTypes are the accepted sniffed content types and their extensions.
var imageTypes = map[string]string{
	"image/png":  "png",
	"image/jpeg": "jpg",
	"image/gif":  "gif",
	"image/webp": "webp",
}

// mimeOfExt is the reverse of imageTypes, for serving.
var mimeOfExt = map[string]string{"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}

type uploadResponse struct {
	ID   string `json:"id"`
	URL  string `json:"url"`
	Size int64  `json:"size"`
	Mime string `json:"mime"`
}

// handleUpload is Slink's POST /api/external/upload: multipart field "image".
// It streams the part to a temp file in the image directory and renames it
// into place only when complete, so a half-written image is never served.
// The client's file name and declared content type are ignored; the content
// is sniffed. Too large a request is refused before its body is read.
func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	limit := s.cfg.MaxUpload + multipartSlack
	if r.ContentLength > limit {
		s.uploadRefused(w, errImageTooBig)
		return
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		s.uploadRefused(w, errImageMissing)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	mr := multipart.NewReader(r.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			s.uploadRefused(w, errImageMissing)
			return
		}
		if err != nil {
			s.uploadRefused(w, readProblem(err))
			return
		}
		if part.FormName() == "image" {
			s.storeImage(w, r, part)
			_ = part.Close()
			return
		}
		// Other fields are skipped; NextPart discards the rest of this one.
	}
}

// storeImage sniffs, writes and publishes one image part.
func (s *Server) storeImage(w http.ResponseWriter, r *http.Request, part io.Reader) {
	head, err := readHead(part, sniffLen)
	switch {
	case err != nil:
		s.uploadRefused(w, readProblem(err))
		return
	case len(head) == 0:
		s.uploadRefused(w, errImageEmpty)
		return
	}
	ctype := http.DetectContentType(head)
	ext, ok := imageTypes[ctype]
	if !ok {
		s.uploadRefused(w, errImageType)
		return
	}

	tmp, err := os.CreateTemp(s.images, ".upload-*")
	if err != nil {
		s.log.Error("upload: creating temp file", "err", err)
		problem.Write(w, errInternal)
		return
	}
	published := false
	defer func() {
		if !published {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	// One byte more than allowed tells "exactly at the limit" from "over".
	size, err := io.Copy(tmp, io.MultiReader(bytesReader(head), io.LimitReader(part, s.cfg.MaxUpload+1-int64(len(head)))))
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) { // writing failed: the disk, not the client
			s.log.Error("upload: writing temp file", "err", err)
			problem.Write(w, errInternal)
			return
		}
		s.uploadRefused(w, readProblem(err))
		return
	}
	if size > s.cfg.MaxUpload {
		s.uploadRefused(w, errImageTooBig)
		return
	}
	if err := tmp.Sync(); err != nil {
		s.log.Error("upload: syncing", "err", err)
		problem.Write(w, errInternal)
		return
	}
	if err := tmp.Close(); err != nil {
		s.log.Error("upload: closing", "err", err)
		problem.Write(w, errInternal)
		return
	}
	id := randomID(ImageIDLen)
	name := id + "." + ext
	if err := os.Rename(tmp.Name(), filepath.Join(s.images, name)); err != nil {
		s.log.Error("upload: publishing", "err", err)
		problem.Write(w, errInternal)
		return
	}
	published = true
	syncDir(s.images) // make the rename itself durable
	url := baseURL(r) + ImagePathPrefix + name
	w.Header().Set("Location", url)
	writeJSON(w, http.StatusCreated, uploadResponse{ID: id, URL: url, Size: size, Mime: ctype})
}

// readHead reads up to n bytes for sniffing. Unlike io.ReadFull it tells a
// short part that ended cleanly (nil error) from a truncated body
// (io.ErrUnexpectedEOF from the multipart reader).
func readHead(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, n)
	got := 0
	for got < n {
		m, err := r.Read(buf[got:])
		got += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return buf[:got], nil
}

// uploadRefused answers an upload error and closes the connection, so that
// the server does not go on reading (and discarding) a large body.
func (s *Server) uploadRefused(w http.ResponseWriter, p problem.Details) {
	w.Header().Set("Connection", "close")
	problem.Write(w, p)
}

// readProblem maps an error reading the request body: over the byte limit is
// 413, anything else (truncated or malformed multipart) is 400.
func readProblem(err error) problem.Details {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errImageTooBig
	}
	return errBadMultipart
}

// removeStaleUploads deletes temp files that a crash left behind. Only old
// ones: another replica sharing the directory may be writing a fresh one.
func removeStaleUploads(dir string, now time.Time) {
	matches, _ := filepath.Glob(filepath.Join(dir, ".upload-*"))
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil && now.Sub(fi.ModTime()) > time.Hour {
			_ = os.Remove(m)
		}
	}
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
