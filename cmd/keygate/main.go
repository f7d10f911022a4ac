// Command keygate is Caddy with the keygate module plugged in, as
// `xcaddy build --with github.com/keygate/keygate/caddymodule` would
// generate it.
package main

import (
	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/keygate/keygate/caddymodule"
)

func main() {
	// help and errors name the binary: `unknown command "revoke" for
	// "keygate api-key"`, not "caddy api-key"
	caddy.CustomBinaryName = "keygate"
	caddycmd.Main()
}
