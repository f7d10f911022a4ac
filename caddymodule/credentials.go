package keygate

import (
	"net/http"
	"strings"
)

// headerAPIKey is the X-API-Key header in canonical form; net/http
// canonicalises incoming names, so any case a client sends matches.
const headerAPIKey = "X-Api-Key"

// credential is the key a request presents, and where it came from.
type credential struct {
	key        string
	bearer     bool // carried in Authorization: Bearer
	apiKey     bool // carried in X-API-Key
	conflicted bool // the two headers carried different keys
}

// credentialFrom reads the key from Authorization: Bearer (scheme
// case-insensitive) and X-API-Key. An Authorization header with another
// scheme (Basic, say) is not ours and is left alone.
func credentialFrom(h http.Header) credential {
	var c credential
	if auth := h.Get("Authorization"); len(auth) >= len("Bearer") && strings.EqualFold(auth[:len("Bearer")], "Bearer") &&
		(len(auth) == len("Bearer") || auth[len("Bearer")] == ' ') {
		c.bearer = true
		c.key = strings.TrimSpace(auth[len("Bearer"):])
	}
	for _, v := range h[headerAPIKey] {
		v = strings.TrimSpace(v)
		switch {
		case !c.apiKey && !c.bearer:
			c.key = v
		case v != c.key:
			c.conflicted = true
		}
		c.apiKey = true
	}
	return c
}

// present reports whether the request carried a key at all.
func (c credential) present() bool { return c.bearer || c.apiKey }

// strip removes the headers that carried the key, so the secret neither
// reaches the upstream nor Caddy's access log.
func (c credential) strip(h http.Header) {
	if c.bearer {
		h.Del("Authorization")
	}
	if c.apiKey {
		delete(h, headerAPIKey)
	}
}
