// Command caddy-cx is Caddy with the standard modules and the caddy-cx
// modules: a gateway that routes to the instances announcing themselves on
// NATS, and its subcommands announce and demo. Every Caddy subcommand
// works as in Caddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-cx/caddy-cx/caddymodule"
	_ "github.com/caddy-cx/caddy-cx/cxcmd"
)

func main() {
	caddycmd.Main()
}
