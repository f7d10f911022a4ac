package keygate

import (
	"net/http"
	"slices"
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
	conflicted bool // the headers carried different keys
}

// credentialFrom reads the key from Authorization: Bearer (scheme
// case-insensitive) and X-API-Key, every value of each: a key hidden
// behind a first value must neither be missed nor passed on. An
// Authorization value with another scheme (Basic, say) is not ours and is
// left alone. Different keys conflict.
func credentialFrom(h http.Header) credential {
	var c credential
	for _, auth := range h["Authorization"] {
		if token, ok := bearerToken(auth); ok {
			c.add(token)
			c.bearer = true
		}
	}
	for _, v := range h[headerAPIKey] {
		c.add(strings.TrimSpace(v))
		c.apiKey = true
	}
	return c
}

// add takes key, found in one more header value.
func (c *credential) add(key string) {
	switch {
	case !c.present():
		c.key = key
	case key != c.key:
		c.conflicted = true
	}
}

// bearerToken is the token of an Authorization value of the Bearer
// scheme, if it is one. RFC 9110 puts a space after the scheme; a tab is
// taken too, as lenient servers behind the gateway would take it: such a
// key must be checked and stripped, not passed on as another scheme's.
func bearerToken(auth string) (string, bool) {
	const scheme = "Bearer"
	if len(auth) < len(scheme) || !strings.EqualFold(auth[:len(scheme)], scheme) ||
		len(auth) > len(scheme) && auth[len(scheme)] != ' ' && auth[len(scheme)] != '\t' {
		return "", false
	}
	return strings.TrimSpace(auth[len(scheme):]), true
}

// present reports whether the request carried a key at all.
func (c credential) present() bool { return c.bearer || c.apiKey }

// strip removes the header values that carried the key (an Authorization
// value of another scheme stays), so the secret neither reaches the
// upstream nor what later handlers log.
func (c credential) strip(h http.Header) {
	if c.bearer {
		if auth := h["Authorization"]; len(auth) == 1 {
			delete(h, "Authorization")
		} else {
			h["Authorization"] = slices.DeleteFunc(slices.Clone(auth), func(v string) bool {
				_, ok := bearerToken(v)
				return ok
			})
			if len(h["Authorization"]) == 0 {
				delete(h, "Authorization")
			}
		}
	}
	if c.apiKey {
		delete(h, headerAPIKey)
	}
}
