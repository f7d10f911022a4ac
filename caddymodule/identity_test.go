package keygate

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/keygate/keygate/caddymodule/store"
)

// inject sets the identity headers and placeholders from what was derived
// once per record, allocating nothing per request (its doc's promise).
func TestInjectAllocatesNothing(t *testing.T) {
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
	if allocs := testing.AllocsPerRun(100, func() { ident.inject(h, repl) }); allocs != 0 {
		t.Errorf("inject: %v allocations per request, want 0", allocs)
	}
}

var identitySink *identity

// A gateway keeps an identity for every key it has seen, which the GC
// scans: it is two heap objects (itself and its bound placeholders), its
// header values pointing into it, and a later handler's append to one of
// them copies rather than writes into it.
func TestIdentityIsTwoObjects(t *testing.T) {
	k := &store.Key{ID: "0123456789abcdef", Name: "bench", Owner: "ops", Roles: []string{"upload"}}
	if allocs := testing.AllocsPerRun(100, func() { identitySink = newIdentity(k) }); allocs != 2 {
		t.Errorf("newIdentity: %v allocations, want 2", allocs)
	}
	ident := newIdentity(k)
	h := http.Header{}
	ident.inject(h, caddy.NewReplacer())
	h.Add(headerKeyRoles, "admin")
	if len(ident.roles) != 1 || ident.roles[0] != "upload" || ident.values[2] != "upload" {
		t.Errorf("an append to the header changed the identity: %q, %q", ident.roles, ident.values)
	}
}
