package keygate

import (
	"net/http"
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

// stripIdentityHeaders deletes every X-Keygate-* header, in any case.
func stripIdentityHeaders(h http.Header) {
	for name := range h {
		if len(name) >= len(identityPrefix) && strings.EqualFold(name[:len(identityPrefix)], identityPrefix) {
			delete(h, name)
		}
	}
}

// identity is a key as the upstream sees it. It is derived once per record
// revision, so injecting it costs no allocation per request.
type identity struct {
	key *store.Key
	// Header values, each a one-element slice with len == cap: they are
	// shared by concurrent requests, and an append by a later handler
	// copies instead of writing into them. They point into values, so that
	// an identity is two heap objects (itself and placeholders): a gateway
	// keeps one per key it has seen, and the GC scans them all.
	id, name, roles, owner []string
	values                 [4]string
	// ownPolicyHdr is the RateLimit-Policy value of the key's own limit,
	// empty when it has none.
	ownPolicyHdr string
	// placeholders is i.placeholder, bound once: a method value made per
	// request would be an allocation.
	placeholders caddy.ReplacerFunc
}

func newIdentity(k *store.Key) *identity {
	i := &identity{key: k, values: [4]string{k.ID, k.Name, strings.Join(k.Roles, ","), k.Owner}}
	i.id, i.name, i.roles, i.owner = i.values[0:1:1], i.values[1:2:2], i.values[2:3:3], i.values[3:4:4]
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
func (i *identity) inject(h http.Header, repl *caddy.Replacer) {
	h[headerKeyID] = i.id
	h[headerKeyName] = i.name
	h[headerKeyRoles] = i.roles
	h[headerKeyOwner] = i.owner
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
		return i.roles[0], true
	case "keygate.key.owner":
		return i.key.Owner, true
	case "keygate.key.prefix":
		return i.key.Prefix, true
	case "keygate.anonymous":
		return false, true
	}
	return nil, false
}

var anonymousValue = []string{"true"} // len == cap == 1

// injectAnonymous marks a request that carried no key.
func injectAnonymous(h http.Header, repl *caddy.Replacer) {
	h[headerAnonymous] = anonymousValue
	repl.Map(anonymousPlaceholder)
}

// anonymousPlaceholder resolves {keygate.anonymous} to true and the key
// placeholders to empty, so one config serves both kinds of caller.
func anonymousPlaceholder(name string) (any, bool) {
	switch name {
	case "keygate.anonymous":
		return true, true
	case "keygate.key.id", "keygate.key.name", "keygate.key.roles", "keygate.key.owner", "keygate.key.prefix":
		return "", true
	}
	return nil, false
}
