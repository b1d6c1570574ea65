// Package caddycx is what a Caddy build imports to get caddy-cx: the Caddy
// modules (package caddymodule) and the `announce` and `demo` subcommands
// (package cxcmd).
//
//	xcaddy build v2.11.9 --with github.com/caddy-cx/caddy-cx
package caddycx

import (
	_ "github.com/caddy-cx/caddy-cx/caddymodule"
	_ "github.com/caddy-cx/caddy-cx/cxcmd"
)
