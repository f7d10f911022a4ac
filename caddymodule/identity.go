package keygate

import (
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/caddymodule/store"
)

// Identity headers the upstream receives. Whatever a client sends under the
// X-Keygate- prefix is removed first, so the upstream can trust them.
const (
	identityPrefix  = "X-Keygate-"
	headerKeyID     = "X-Keygate-Key-Id"
	headerKeyName   = "X-Keygate-Key-Name"
	headerKeyRoles  = "X-Keygate-Roles"
	headerKeyOwner  = "X-Keygate-Owner"
	headerAnonymous = "X-Keygate-Anonymous"
)

// stripIdentityHeaders deletes every X-Keygate-* header, in any case and
// with underscores (or dots) for any of its dashes: CGI, FastCGI (Caddy's
// php_fastcgi), WSGI and Rack turn both into HTTP_X_KEYGATE_..., so a
// client's X_Keygate_Key_Id would reach such an app as the gateway's word.
// Caddy drops headers with underscores itself, unless the server
// allowlists them (expected_underscore_headers).
//
// Nor may a client name one in Connection: a header named there is
// hop-by-hop, and reverse_proxy deletes it after this handler has run, so
// "Connection: X-Keygate-Key-Id" would take the gateway's own header away
// from the upstream (a keyed request would reach it as anonymous). Such
// names are dropped from Connection.
//
// It reports whether it deleted any header (a Connection name aside).
func stripIdentityHeaders(h http.Header) (stripped bool) {
	for name := range h {
		if isIdentityHeader(name) {
			delete(h, name)
			stripped = true
		}
	}
	if conn := h["Connection"]; slices.ContainsFunc(conn, namesIdentityHeader) {
		kept := make([]string, 0, len(conn))
		for _, v := range conn {
			if v = withoutIdentityNames(v); v != "" {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			delete(h, "Connection")
		} else {
			h["Connection"] = kept
		}
	}
	return stripped
}

// stripIdentityTrailers keeps X-Keygate-* names out of the trailers of a
// request that declares trailers (Trailer): reverse_proxy forwards them,
// and an upstream that merges trailers into headers would take them for
// the gateway's word. The names declared are deleted now; the values
// arrive at the end of the body, with any undeclared trailer merged into
// the same map, and are deleted as the body's end is read, before
// reverse_proxy copies them. A request without a Trailer header pays
// nothing: net/http then gives its trailers to a map no handler sees.
func stripIdentityTrailers(r *http.Request) {
	stripIdentityHeaders(r.Trailer)
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &identityTrailersStripped{ReadCloser: r.Body, trailer: r.Trailer}
	}
}

// identityTrailersStripped is a request body that strips identity names
// from its request's trailers when its end is read.
type identityTrailersStripped struct {
	io.ReadCloser
	trailer http.Header
}

func (b *identityTrailersStripped) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		stripIdentityHeaders(b.trailer)
	}
	return n, err
}

// namesIdentityHeader says whether a Connection value lists an identity
// header among its comma-separated names.
func namesIdentityHeader(v string) bool {
	for name := range strings.SplitSeq(v, ",") {
		if isIdentityHeader(textproto.TrimString(name)) {
			return true
		}
	}
	return false
}

// withoutIdentityNames is a Connection value without its identity headers'
// names.
func withoutIdentityNames(v string) string {
	var kept []string
	for name := range strings.SplitSeq(v, ",") {
		if name = textproto.TrimString(name); name != "" && !isIdentityHeader(name) {
			kept = append(kept, name)
		}
	}
	return strings.Join(kept, ", ")
}

// isIdentityHeader says whether name starts with identityPrefix, in any
// case, '_' or '.' matching '-': CGI-style variables fold both to '_'
// (Caddy drops such names unless a server allowlists them:
// expected_underscore_headers, expected_dot_headers).
func isIdentityHeader(name string) bool {
	if len(name) < len(identityPrefixLower) {
		return false
	}
	for i := range len(identityPrefixLower) {
		c := name[i]
		switch {
		case c == '_' || c == '.':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != identityPrefixLower[i] {
			return false
		}
	}
	return true
}

// identityPrefixLower is identityPrefix as isIdentityHeader compares it.
var identityPrefixLower = strings.ToLower(identityPrefix)

// identity is a key as the upstream sees it. It is derived once per record
// revision, so injecting it costs one allocation per request.
type identity struct {
	key *store.Key
	// the identity headers' values: id, name, roles (comma-separated),
	// owner, in one array so that an identity is two heap objects (itself
	// and placeholders): a gateway keeps one per key it has seen, and the
	// GC scans them all
	values [4]string
	// ownPolicyHdr is the RateLimit-Policy value of the key's own limit,
	// empty when it has none.
	ownPolicyHdr string
	// placeholders is i.placeholder, bound once: a method value made per
	// request would be an allocation.
	placeholders caddy.ReplacerFunc
}

func newIdentity(k *store.Key) *identity {
	i := &identity{key: k, values: [4]string{k.ID, k.Name, strings.Join(k.Roles, ","), k.Owner}}
	if !k.RateLimit.IsZero() {
		i.ownPolicyHdr = policyHeader(policyNameKey, k.RateLimit)
	}
	i.placeholders = i.placeholder
	return i
}

// hasAnyRole reports whether the key holds at least one of roles (true when
// roles is empty).
func (i *identity) hasAnyRole(roles []string) bool {
	if len(roles) == 0 {
		return true
	}
	for _, want := range roles {
		for _, have := range i.key.Roles {
			if have == want {
				return true
			}
		}
	}
	return false
}

// inject sets the identity headers and the {keygate.*} placeholders.
// X-Keygate-Roles and X-Keygate-Owner go only with a key that has roles or
// an owner: an empty header says no more than an absent one (the client's
// were stripped), and each header costs every hop that parses, copies and
// logs it (BenchmarkThroughCaddy). The headers' values are this request's
// own, one allocation for them all: a later handler may write into them in
// place (request_header's replace does), which must not reach other
// requests with the same key.
func (i *identity) inject(h http.Header, repl *caddy.Replacer) {
	v := new([4]string)
	*v = i.values
	h[headerKeyID] = v[0:1:1]
	h[headerKeyName] = v[1:2:2]
	if v[2] != "" {
		h[headerKeyRoles] = v[2:3:3]
	}
	if v[3] != "" {
		h[headerKeyOwner] = v[3:4:4]
	}
	repl.Map(i.placeholders)
}

// placeholder resolves {keygate.key.id}, {keygate.key.name},
// {keygate.key.roles}, {keygate.key.owner}, {keygate.key.prefix},
// {keygate.anonymous} and {http.auth.user.id} (the key id), lazily: only
// the ones a config uses cost anything.
func (i *identity) placeholder(name string) (any, bool) {
	switch name {
	case "keygate.key.id", "http.auth.user.id":
		return i.key.ID, true
	case "keygate.key.name":
		return i.key.Name, true
	case "keygate.key.roles":
		return i.values[2], true
	case "keygate.key.owner":
		return i.key.Owner, true
	case "keygate.key.prefix":
		return i.key.Prefix, true
	case "keygate.anonymous":
		return false, true
	}
	return nil, false
}

// injectAnonymous marks a request that carried no key; the header's value
// is the request's own (see inject).
func injectAnonymous(h http.Header, repl *caddy.Replacer) {
	h[headerAnonymous] = []string{"true"}
	repl.Map(anonymousPlaceholder)
}

// anonymousPlaceholder resolves {keygate.anonymous} to true and the key
// placeholders (with {http.auth.user.id}) to empty, so one config serves
// both kinds of caller.
func anonymousPlaceholder(name string) (any, bool) {
	switch name {
	case "keygate.anonymous":
		return true, true
	case "keygate.key.id", "keygate.key.name", "keygate.key.roles", "keygate.key.owner", "keygate.key.prefix", "http.auth.user.id":
		return "", true
	}
	return nil, false
}
