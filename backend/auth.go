package backend

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// Headers of the contract with the gateway.
const (
	HeaderUpstreamSecret = "X-Keygate-Upstream-Secret"
	HeaderKeyID          = "X-Keygate-Key-Id"
	HeaderKeyName        = "X-Keygate-Key-Name"
	HeaderRoles          = "X-Keygate-Roles"
	HeaderOwner          = "X-Keygate-Owner"
	HeaderAnonymous      = "X-Keygate-Anonymous"
	// HeaderClientIP is the client's address as the gateway worked it out
	// (Caddy's {client_ip}: trusted_proxies honoured), set by the stack's
	// Caddyfile. Read only from requests that carry the upstream secret.
	HeaderClientIP = "X-Keygate-Client-Ip"
)

// sum hashes the secret so that the comparison below takes the same time
// whatever the length of the presented value (ConstantTimeCompare returns
// early on a length mismatch).
func sum(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// fromGateway reports whether r carries the shared upstream secret.
func (s *Server) fromGateway(r *http.Request) bool {
	if s.cfg.InsecureNoSecret {
		return true
	}
	got := sum(r.Header.Get(HeaderUpstreamSecret))
	return subtle.ConstantTimeCompare(got[:], s.secretSum[:]) == 1
}

// Identity is the caller as the gateway describes it. The backend makes no
// access decisions of its own: the gateway has already allowed the request.
type Identity struct {
	KeyID   string
	KeyName string
	Roles   []string
	// Owner groups keys of one account; may be empty.
	Owner string
}

// Anonymous reports whether the gateway let the request through without a key.
func (id Identity) Anonymous() bool { return id.KeyID == "" }

// OwnerKey names the account that owns what this caller creates: the owner
// label when the key has one, else the key itself. Empty when anonymous.
func (id Identity) OwnerKey() string {
	switch {
	case id.Anonymous():
		return ""
	case id.Owner != "":
		return "owner:" + id.Owner
	default:
		return "key:" + id.KeyID
	}
}

// DisplayName is a human label of the owner: the owner label, else the key
// name, else the key id.
func (id Identity) DisplayName() string {
	for _, v := range []string{id.Owner, id.KeyName, id.KeyID} {
		if v != "" {
			return v
		}
	}
	return ""
}

// identity reads the X-Keygate-* headers. "X-Keygate-Anonymous: true" wins
// over anything else, and a request with no key id is anonymous too.
func identity(r *http.Request) Identity {
	h := r.Header
	if strings.EqualFold(strings.TrimSpace(h.Get(HeaderAnonymous)), "true") {
		return Identity{}
	}
	id := Identity{
		KeyID:   strings.TrimSpace(h.Get(HeaderKeyID)),
		KeyName: strings.TrimSpace(h.Get(HeaderKeyName)),
		Owner:   strings.TrimSpace(h.Get(HeaderOwner)),
	}
	if id.KeyID == "" {
		return Identity{}
	}
	for _, role := range strings.Split(h.Get(HeaderRoles), ",") {
		if role = strings.TrimSpace(role); role != "" {
			id.Roles = append(id.Roles, role)
		}
	}
	return id
}
