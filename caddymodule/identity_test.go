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
