package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Failover{})
}

// Failover is the `cx_failover` selection policy: round-robin among the
// available instances of the best (lowest) priority; the next priority
// only when none of the better one is available (nginx's `backup`, with
// any number of tiers). A retry never goes back to an instance that
// already failed the request, and each instance is tried at most once.
// With upstreams other than `dynamic cx`, all of them form one tier.
type Failover struct {
	turn uint64
}

// CaddyModule returns the Caddy module information.
func (Failover) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.cx_failover",
		New: func() caddy.Module { return new(Failover) },
	}
}

// Select returns the upstream for this try of the request.
func (p *Failover) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	return selectTiered(pool, r, &p.turn, false)
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy cx_failover
func (p *Failover) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return noOptions(d, "cx_failover")
}

// Interface guards.
var (
	_ reverseproxy.Selector = (*Failover)(nil)
	_ caddyfile.Unmarshaler = (*Failover)(nil)
)
