package backend

import (
	"net/http"
	"strings"
)

// baseURL is scheme://host as the client addressed the gateway, taken from
// X-Forwarded-Proto and X-Forwarded-Host (Caddy's reverse_proxy sets both),
// falling back to the request's own Host and plain http. The headers are
// trusted because the request carried the upstream secret, but they are
// still validated: they end up in URLs that clients follow.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := strings.ToLower(firstValue(r.Header.Get("X-Forwarded-Proto"))); p == "http" || p == "https" {
		scheme = p
	}
	host := firstValue(r.Header.Get("X-Forwarded-Host"))
	if !validHost(host) {
		host = r.Host
	}
	if !validHost(host) {
		host = "localhost"
	}
	return scheme + "://" + host
}

// firstValue is the first element of a comma-separated header: the one the
// client-facing proxy set when the request went through several.
func firstValue(v string) string {
	if i := strings.IndexByte(v, ','); i >= 0 {
		v = v[:i]
	}
	return strings.TrimSpace(v)
}

// validHost accepts host names, IPv4, bracketed IPv6 and a port, and nothing
// that could break out of a URL's authority.
func validHost(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}
