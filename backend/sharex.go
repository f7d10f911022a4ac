package backend

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/keygate/keygate/internal/problem"
)

// ShareXVersion is written into the .sxcu file. ShareX migrates files whose
// Version is older than 13.7 from the old "$json:url$" syntax; the
// "{json:url}" syntax used here is the current one.
const ShareXVersion = "16.1.0"

// shareXConfig is a ShareX custom uploader (.sxcu), current format.
type shareXConfig struct {
	Version         string            `json:"Version"`
	Name            string            `json:"Name"`
	DestinationType string            `json:"DestinationType"`
	RequestMethod   string            `json:"RequestMethod"`
	RequestURL      string            `json:"RequestURL"`
	Headers         map[string]string `json:"Headers"`
	Body            string            `json:"Body"`
	FileFormName    string            `json:"FileFormName"`
	URL             string            `json:"URL"`
	ErrorMessage    string            `json:"ErrorMessage"`
}

// handleShareXConfig is Slink's GET /api/user/sharex-config?baseUrl=&apiKey=.
// The backend cannot know the caller's key in clear (the gateway hashes
// keys), so the client passes it, exactly as Slink's page does.
func (s *Server) handleShareXConfig(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	base, host, ok := parseBaseURL(q.Get("baseUrl"))
	if !ok {
		problem.Write(w, errBadBaseURL)
		return
	}
	key := q.Get("apiKey")
	if key == "" || len(key) > 512 || !printableASCII(key) {
		problem.Write(w, errBadAPIKey)
		return
	}
	cfg := shareXConfig{
		Version:         ShareXVersion,
		Name:            host,
		DestinationType: "ImageUploader",
		RequestMethod:   "POST",
		RequestURL:      base + "/api/external/upload",
		Headers:         map[string]string{"Authorization": "Bearer " + key},
		Body:            "MultipartFormData",
		FileFormName:    "image",
		URL:             "{json:url}",
		ErrorMessage:    "{json:error}",
	}
	// The file holds a key: an attachment, never cached.
	w.Header().Set("Content-Disposition", `attachment; filename="`+host+`.sxcu"`)
	writeJSON(w, http.StatusOK, cfg)
}

// parseBaseURL accepts an absolute http(s) URL, optionally with a path prefix
// (an instance under /slink), and returns it without a trailing slash, plus
// its host (safe for a file name: validHost allows no quotes or slashes).
func parseBaseURL(raw string) (base, host string, ok bool) {
	raw = strings.TrimSpace(raw)
	if raw == "" || len(raw) > 2048 {
		return "", "", false
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || !validHost(u.Host) ||
		u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
		return "", "", false
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	// ':' of an IPv6 address is not allowed in Windows file names.
	return u.String(), strings.ReplaceAll(u.Hostname(), ":", "_"), true
}
