// Command caddy-cx is Caddy with the standard modules and the caddy-cx
// modules: a gateway that routes to the instances announcing themselves on
// NATS, and its subcommands announce and demo. Every Caddy subcommand
// works as in Caddy; `version` names caddy-cx's version before Caddy's.
package main

import (
	"fmt"
	"os"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-cx/caddy-cx"
	"github.com/caddy-cx/caddy-cx/cxcmd"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Println(cxcmd.Version())
		fmt.Print("Caddy ")
	}
	caddycmd.Main()
}
