// Package problem writes RFC 9457 problem details. Every body also carries an
// "error" member with a short message, so clients written against either the
// problem+json style (Shlink) or the {"error": "..."} style (Short Link,
// Shorturlx, SecLink) read it without changes.
package problem

import (
	"encoding/json"
	"net/http"
)

// ContentType is the media type of every problem body.
const ContentType = "application/problem+json"

// TypeBase prefixes the type URI of keygate's own problems.
const TypeBase = "https://keygate.dev/problems/"

// Details is one problem. Type defaults to TypeBase+"about" style slugs chosen
// by the caller; Title is short and stable, Detail is for humans, Error is the
// short message of the {"error": "..."} style.
type Details struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error"`
}

// New returns a problem whose type is TypeBase+slug and whose error message
// defaults to the title.
func New(status int, slug, title, detail string) Details {
	return Details{Type: TypeBase + slug, Title: title, Status: status, Detail: detail, Error: title}
}

// WithError returns a copy of d whose "error" member is msg.
func (d Details) WithError(msg string) Details {
	d.Error = msg
	return d
}

// Write sends d as the whole response. Headers already set on w (such as
// WWW-Authenticate or Retry-After) are kept.
func Write(w http.ResponseWriter, d Details) { WriteValue(w, d.Status, d) }

// WriteValue sends v, a problem (a struct embedding Details, with members
// of its own: RFC 9457's extension members), as the whole response.
func WriteValue(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil { // cannot happen: problems hold strings and ints
		http.Error(w, http.StatusText(status), status)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
