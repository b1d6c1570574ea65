package caddymodule

import (
	"context"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Transport{})
}

// Transport is the `cx` transport: Caddy's `http` transport (every option
// of it, same Caddyfile syntax) that also knows which instance a request
// waits on. When that instance turns stale (its heartbeats stopped: dead,
// hung or cut off), requests still waiting for its response are cancelled
// and, if idempotent, retried on another instance at once, instead of
// hanging until a timeout. cx_proxy uses it in place of `http`.
type Transport struct {
	reverseproxy.HTTPTransport
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.cx",
		New: func() caddy.Module { return new(Transport) },
	}
}

// RoundTrip sends req, cancelling it if its instance turns stale before
// the response headers arrive. It refuses, without dialing, to send a body
// stream that an earlier try of the request already read from: whatever
// the selection policy, no instance gets part of a body as if it were all
// of it.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	body, st, err := bodyForTry(req, requestIn(req.Context()))
	c := st.pool()
	if c == nil || c.svc == nil {
		if err != nil {
			st.ended(req.URL.Host, "", outcomeBodySpent, 0)
			return nil, err
		}
		if body != nil {
			req = req.WithContext(req.Context())
			req.Body = body
		}
		resp, err := t.HTTPTransport.RoundTrip(req)
		if st != nil {
			st.ended(req.URL.Host, "", outcomeOf(resp, err), statusOf(resp))
		}
		return resp, err
	}
	id, dial := c.instanceOfTry(req)
	if err != nil {
		st.ended(dial, id, outcomeBodySpent, 0)
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	c.svc.inflight.add(id, &st.wait, cancel)
	try := req.WithContext(ctx)
	if body != nil {
		try.Body = body
	}
	resp, err := t.HTTPTransport.RoundTrip(try)
	c.svc.inflight.remove(&st.wait)
	if err != nil && context.Cause(ctx) == errInstanceStale {
		err = fmt.Errorf("%s at %s: %w", id, dial, errInstanceStale)
	}
	c.svc.recordAttempt(st, dial, id, resp, err)
	if c.header != "" && resp != nil && id != "" {
		resp.Header.Set(c.header, id)
	}
	return resp, err
}

// DefaultInstanceHeader is the response header `header_instance` without
// a name adds.
const DefaultInstanceHeader = "X-Cx-Instance"

// UnmarshalCaddyfile takes the `http` transport's Caddyfile syntax.
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return t.HTTPTransport.UnmarshalCaddyfile(d)
}

// Interface guards.
var (
	_ caddy.Provisioner                                = (*Transport)(nil)
	_ caddy.CleanerUpper                               = (*Transport)(nil)
	_ http.RoundTripper                                = (*Transport)(nil)
	_ reverseproxy.TLSTransport                        = (*Transport)(nil)
	_ reverseproxy.H2CTransport                        = (*Transport)(nil)
	_ reverseproxy.RequestHeaderOpsTransport           = (*Transport)(nil)
	_ reverseproxy.ProxyProtocolTransport              = (*Transport)(nil)
	_ reverseproxy.HealthCheckSchemeOverriderTransport = (*Transport)(nil)
	_ caddyfile.Unmarshaler                            = (*Transport)(nil)
)
