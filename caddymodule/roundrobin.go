package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(RoundRobin{})
}

// RoundRobin is the `cx_round_robin` selection policy: round-robin over
// every available instance whatever its priority, with the same retry
// rule as cx_failover (never the same instance twice for one request).
type RoundRobin struct {
	turn uint64
}

// CaddyModule returns the Caddy module information.
func (RoundRobin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.cx_round_robin",
		New: func() caddy.Module { return new(RoundRobin) },
	}
}

// Select returns the upstream for this try of the request.
func (p *RoundRobin) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	return selectTiered(pool, r, &p.turn, true)
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy cx_round_robin
func (p *RoundRobin) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d, "cx_round_robin")
}

// Interface guards.
var (
	_ reverseproxy.Selector = (*RoundRobin)(nil)
	_ caddyfile.Unmarshaler = (*RoundRobin)(nil)
)
