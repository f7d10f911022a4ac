package backend

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"

	"github.com/keygate/keygate/internal/problem"
)

// viewerHTML is the page a secret's shareUrl (<base>/<linkId>) opens: it
// fetches the secret when the recipient presses Reveal, and decrypts it in
// the browser with the key in the link's fragment (see its script).
//
//go:embed viewer.html
var viewerHTML []byte

// viewerCSP lets the page run its own inline script and style and reach
// only this origin: nothing else, so an injected script, a frame or a form
// has nowhere to take a decrypted secret.
var viewerCSP = "default-src 'none'; script-src " + inlineHash(viewerHTML, "script") +
	"; style-src " + inlineHash(viewerHTML, "style") +
	"; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash is the CSP source ('sha256-…') of the content of page's first
// <tag> element.
func inlineHash(page []byte, tag string) string {
	_, rest, ok := bytes.Cut(page, []byte("<"+tag+">"))
	content, _, closed := bytes.Cut(rest, []byte("</"+tag+">"))
	if !ok || !closed {
		panic("viewer.html has no <" + tag + "> element")
	}
	sum := sha256.Sum256(content)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// handleViewer serves the viewer page for a well-formed linkId, whether or
// not the secret exists: the page asks only when told to, so opening a link
// (or a chat's preview of it) never burns a view_once secret.
func (s *Server) handleViewer(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); !isSecretID(id) {
		problem.Write(w, errSecretMissing)
		return
	}
	serveViewer(w)
}

// serveViewer writes the viewer page, which reads the linkId from the
// path's last segment: /s/<linkId> or /<linkId>.
func serveViewer(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", viewerCSP)
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Robots-Tag", "noindex, nofollow")
	_, _ = w.Write(viewerHTML)
}
