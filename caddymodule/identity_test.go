package keygate

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/caddymodule/store"
)

// inject sets the identity headers and placeholders from what was derived
// once per record, allocating once per request: the headers' own values
// (its doc's promise).
func TestInjectAllocatesOnce(t *testing.T) {
	ident := newIdentity(&store.Key{ID: "0123456789abcdef", Name: "bench", Owner: "ops", Roles: []string{"upload", "read"}})
	h := http.Header{}
	repl := caddy.NewReplacer()
	ident.inject(h, repl)
	for name, want := range map[string]string{headerKeyID: "0123456789abcdef", headerKeyName: "bench", headerKeyRoles: "upload,read", headerKeyOwner: "ops"} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if got := repl.ReplaceAll("{keygate.key.id} {keygate.key.roles} {http.auth.user.id}", ""); got != "0123456789abcdef upload,read 0123456789abcdef" {
		t.Errorf("placeholders: %q", got)
	}
	// The replacer's list of providers grows now and then; integer
	// division leaves that out.
	if allocs := testing.AllocsPerRun(100, func() { ident.inject(h, repl) }); allocs != 1 {
		t.Errorf("inject: %v allocations per request, want 1", allocs)
	}
}

// A key without roles or an owner sends neither header: absent says what
// empty would, for less work at every hop. The id and the name always go.
func TestInjectLeavesOutEmptyRolesAndOwner(t *testing.T) {
	h := http.Header{}
	newIdentity(&store.Key{ID: "0123456789abcdef", Name: "bench"}).inject(h, caddy.NewReplacer())
	for _, name := range []string{headerKeyRoles, headerKeyOwner} {
		if v, sent := h[name]; sent {
			t.Errorf("%s sent as %q for a key without it", name, v)
		}
	}
	if h.Get(headerKeyID) != "0123456789abcdef" || h.Get(headerKeyName) != "bench" || len(h) != 2 {
		t.Errorf("headers %v, want the id and the name", h)
	}
}

var identitySink *identity

// A gateway keeps an identity for every key it has seen, which the GC
// scans: it is two heap objects (itself and its bound placeholders), and
// what a later handler does to a request's identity headers, appending to
// one or writing into it in place (request_header's replace), changes
// neither it nor another request's.
func TestIdentityIsTwoObjects(t *testing.T) {
	k := &store.Key{ID: "0123456789abcdef", Name: "bench", Owner: "ops", Roles: []string{"upload"}}
	if allocs := testing.AllocsPerRun(100, func() { identitySink = newIdentity(k) }); allocs != 2 {
		t.Errorf("newIdentity: %v allocations, want 2", allocs)
	}
	ident := newIdentity(k)
	h, other := http.Header{}, http.Header{}
	ident.inject(h, caddy.NewReplacer())
	ident.inject(other, caddy.NewReplacer())
	h.Add(headerKeyRoles, "admin")
	h[headerKeyName][0] = "rewritten"
	if ident.values[2] != "upload" || ident.values[1] != "bench" || other.Get(headerKeyName) != "bench" || len(other[headerKeyRoles]) != 1 {
		t.Errorf("a later handler changed the identity: %q, or another request's: %v", ident.values, other)
	}
}

func TestIsIdentityHeader(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Keygate-Key-Id":    true,
		"x-keygate-roles":     true,
		"X-KEYGATE-OWNER":     true,
		"X_Keygate_Key_Id":    true,
		"x_keygate-anonymous": true,
		"X-Keygate_":          true,
		"X-Keygate-":          true,
		"X-Keygate":           false,
		"X-Keygatex-Key-Id":   false,
		"X-Keygat3-Key-Id":    false,
		"X.Keygate.Key-Id":    true, // PHP folds dots to underscores too
		"x_keygate.owner":     true,
		"X:Keygate-Key-Id":    false,
		"Authorization":       false,
		"":                    false,
	} {
		if got := isIdentityHeader(name); got != want {
			t.Errorf("isIdentityHeader(%q) = %v, want %v", name, got, want)
		}
	}
}
