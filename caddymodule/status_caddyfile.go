package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("cx_status", parseCxStatus)
	// Before reverse_proxy (and so before cx_proxy, which comes after it),
	// so that `cx_status /ha` beside a catch-all cx_proxy answers /ha in a
	// site without a route block. basic_auth is ordered earlier still.
	httpcaddyfile.RegisterDirectiveOrder("cx_status", httpcaddyfile.Before, "reverse_proxy")
}

func parseCxStatus(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(StatusPage)
	err := p.UnmarshalCaddyfile(h.Dispenser)
	return p, err
}

// UnmarshalCaddyfile sets up the page from Caddyfile tokens. Syntax:
//
//	cx_status [<matcher>] {
//		subject_prefix <prefix...>
//		title          <text>
//		refresh        <duration>
//		limit          <instances>
//		public
//		actions        on|off
//	}
//
// A path as the matcher (`cx_status /ha`) serves the page at that path.
func (p *StatusPage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("cx_status takes only a matcher (like /ha), got %q; options go in a block", d.Val())
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "subject_prefix":
			prefixes := d.RemainingArgs()
			if len(prefixes) == 0 {
				return d.Errf("subject_prefix needs at least one prefix, like cx.ha")
			}
			p.SubjectPrefixes = append(p.SubjectPrefixes, prefixes...)
		case "title":
			if err := oneArg(d, &p.Title); err != nil {
				return err
			}
		case "refresh":
			if err := durationArg(d, &p.Refresh); err != nil {
				return err
			}
		case "limit":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("limit %q: want a positive number of instances", v)
			}
			p.Limit = n
		case "public":
			if d.NextArg() {
				return d.ArgErr()
			}
			p.Public = true
		case "actions":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			switch v {
			case "on":
				p.DisableActions = false
			case "off":
				p.DisableActions = true
			default:
				return d.Errf("actions %q: want on or off", v)
			}
		default:
			return d.Errf("unknown cx_status option %q; allowed: subject_prefix, title, refresh, limit, public, actions", opt)
		}
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*StatusPage)(nil)
