// Command keygate is Caddy with the keygate module plugged in, as
// `xcaddy build --with github.com/keygate/keygate/caddymodule` would
// generate it.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/keygate/keygate/caddymodule"
)

func main() {
	caddycmd.Main()
}
