package caddymodule

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("cx_proxy", parseCxProxy)
	httpcaddyfile.RegisterDirectiveOrder("cx_proxy", httpcaddyfile.After, "reverse_proxy")
}

// The defaults cx_proxy adds to reverse_proxy, each only where the block
// does not set it. They are documented in the README as these lines.
const (
	// DefaultRetries is the most further tries of one request: at most
	// one per candidate instance (the policy never repeats one).
	DefaultRetries = MaxCandidates
	// DefaultStreamCloseDelay keeps WebSockets and other streams open
	// across config reloads (stock Caddy closes them at once).
	DefaultStreamCloseDelay = "24h"
	// DefaultRequestBuffers is how much of a request body is buffered so
	// that an idempotent request with a body (PUT) can be replayed whole on
	// another instance, as nginx's proxy_request_buffering does. Only a
	// body shorter than this, chunked or not, is buffered whole. A body of
	// this size or more streams on; once a try has read from it, no other
	// instance gets the request: the client gets that try's error (502,
	// 504 for a timeout). A try that read none of it (a refused dial) is
	// still retried.
	DefaultRequestBuffers = 64 << 10
	// DefaultIdleConnsPerHost keeps enough idle upstream connections for
	// many concurrent clients, so that load does not churn connections.
	DefaultIdleConnsPerHost = 128
	// DefaultRetryMatch is nginx's `proxy_next_upstream error timeout
	// http_502 http_503 http_504` for idempotent methods. Dial errors are
	// retried for every method by reverse_proxy itself; POST, PATCH and
	// LOCK are never replayed once sent.
	DefaultRetryMatch = `
lb_retry_match {
	method GET HEAD OPTIONS PUT DELETE TRACE
}
lb_retry_match {
	method GET HEAD OPTIONS PUT DELETE TRACE
	expression ` + "`{http.reverse_proxy.status_code} in [502, 503, 504]`" + `
}
`
)

// parseCxProxy sets up cx_proxy: reverse_proxy with the cx upstream source
// and cx's policy and retry defaults. Syntax:
//
//	cx_proxy [<matcher>] {
//		subject_prefix <prefix>
//		policy         failover|round_robin
//		stale_after    <duration>
//		forget_after   <duration>
//		fail_timeout   <duration>
//		share_failures on|off
//		allow_networks <cidr...>
//		allow_ids      <glob...>
//		priority       <id> <n>
//		priority_range <min> <max>
//		clock_skew     <duration>
//		scheme         http|https
//		max_instances  <n>
//		header_instance [<name>]
//		versions       any|consistent
//		rise           <n>
//		flap_limit     <n>
//		flap_window    <duration>
//		flap_hold      <duration>
//		slow_start     <duration>
//		failback_delay <duration>
//		confirm_with   <path>
//		# ...and any reverse_proxy subdirective, which overrides a default
//	}
//
// scheme defaults to https when the transport has tls (`transport http {
// tls }`), else http; instances announcing the other scheme are refused.
func parseCxProxy(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	source := new(Upstreams)
	policy := "failover"
	// The helper's dispenser holds only this directive's tokens (the
	// matcher token already removed), so ours can be deleted from it.
	dispenser := h.Dispenser
	dispenser.Reset()
	for dispenser.Next() {
		if dispenser.NextArg() {
			return nil, dispenser.Errf("cx_proxy takes no upstream addresses: instances announce themselves on NATS")
		}
		for dispenser.NextBlock(0) {
			if dispenser.Nesting() != 1 {
				continue
			}
			if err := cxProxyOption(dispenser, source, &policy); err != nil {
				return nil, err
			}
		}
	}
	dispenser.Reset()
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(dispenser); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	if len(rp.Upstreams) > 0 || rp.DynamicUpstreamsRaw != nil {
		return nil, h.Errf("cx_proxy: upstreams come from NATS; remove `to` and `dynamic`")
	}
	warnPolicyOverride(h, rp)
	if err := applyProxyDefaults(rp, source, policy); err != nil {
		return nil, err
	}
	return rp, nil
}

// warnPolicyOverride warns when an lb_policy inside cx_proxy replaces the
// cx policies: the priority tiers (primary and backups), passive health
// and the never-the-same-instance-twice rule of retries are then gone.
func warnPolicyOverride(h httpcaddyfile.Helper, rp *reverseproxy.Handler) {
	if rp.LoadBalancing == nil || rp.LoadBalancing.SelectionPolicyRaw == nil {
		return
	}
	var policy struct {
		Name string `json:"policy"`
	}
	if json.Unmarshal(rp.LoadBalancing.SelectionPolicyRaw, &policy) != nil || strings.HasPrefix(policy.Name, "cx_") {
		return
	}
	caddy.Log().Warn("cx_proxy: lb_policy "+policy.Name+" replaces cx's failover tiers, passive health and retry "+
		"rules; use `policy failover` or `policy round_robin` unless that is what you want",
		zap.String("file", h.File()), zap.Int("line", h.Line()))
}

// cxProxyOption consumes one of cx_proxy's own options, deleting its
// tokens so that reverse_proxy's parser does not see them.
func cxProxyOption(d *caddyfile.Dispenser, source *Upstreams, policy *string) error {
	switch {
	case slices.Contains(sourceOptions, d.Val()):
		line := takeLine(d)
		return source.unmarshalOption(line)
	case strings.HasPrefix(d.Val(), "health_"):
		return d.Errf("cx_proxy: %s configures an active health check, which Caddy does not run for upstreams "+
			"announced on NATS: instances report their own health. Remove it; use the sidecar's --health "+
			"(caddy-cx announce) or cx_proxy's confirm_with instead", d.Val())
	case d.Val() == "policy":
		line := takeLine(d)
		if err := oneArg(line, policy); err != nil {
			return err
		}
		if *policy != "failover" && *policy != "round_robin" {
			return line.Errf("policy %q: allowed are failover (the default) and round_robin", *policy)
		}
	}
	return nil
}

// takeLine removes the current option's line from d and returns it as a
// dispenser positioned on the option name.
func takeLine(d *caddyfile.Dispenser) *caddyfile.Dispenser {
	seg := d.NextSegment()
	d.DeleteN(len(seg))
	line := caddyfile.NewDispenser(seg)
	line.Next()
	return line
}

func applyProxyDefaults(rp *reverseproxy.Handler, source *Upstreams, policy string) error {
	if rp.LoadBalancing == nil {
		rp.LoadBalancing = new(reverseproxy.LoadBalancing)
	}
	lb := rp.LoadBalancing
	if lb.SelectionPolicyRaw == nil {
		name := "cx_failover"
		if policy == "round_robin" {
			name = "cx_round_robin"
		}
		lb.SelectionPolicyRaw = caddyconfig.JSONModuleObject(struct{}{}, "policy", name, nil)
	}
	if lb.Retries == 0 && lb.TryDuration == 0 {
		lb.Retries = DefaultRetries
	}
	if lb.RetryMatchRaw == nil {
		sets, err := defaultRetryMatch()
		if err != nil {
			return err
		}
		lb.RetryMatchRaw = sets
	}
	if rp.StreamCloseDelay == 0 {
		dur, _ := caddy.ParseDuration(DefaultStreamCloseDelay)
		rp.StreamCloseDelay = caddy.Duration(dur)
	}
	if rp.RequestBuffers == 0 {
		rp.RequestBuffers = DefaultRequestBuffers
	}
	transport, tls, err := cxTransport(rp.TransportRaw)
	if err != nil {
		return err
	}
	rp.TransportRaw = transport
	if err := proxyScheme(source, tls); err != nil {
		return err
	}
	rp.DynamicUpstreamsRaw = caddyconfig.JSONModuleObject(source, "source", "cx", nil)
	return nil
}

// proxyScheme makes the source admit the scheme the transport dials: a
// transport with tls reaches only https instances, one without only http
// ones, so nothing is ever downgraded.
func proxyScheme(source *Upstreams, tls bool) error {
	switch {
	case source.Scheme == "" && tls:
		source.Scheme = "https"
	case source.Scheme == "", (source.Scheme == "https") == tls:
	default:
		if tls {
			return fmt.Errorf("cx_proxy: scheme http with a tls transport: remove `scheme http` (instances behind tls announce https urls) or remove tls")
		}
		return fmt.Errorf("cx_proxy: scheme https needs tls to the instances: add `transport http { tls }`, or remove `scheme https`")
	}
	return nil
}

// cxTransport turns the `http` transport (or none) into the `cx` transport
// with the same settings, adding the keep-alive pool default, and reports
// whether it dials instances with TLS. Other transports (fastcgi) are left
// alone.
func cxTransport(raw json.RawMessage) (_ json.RawMessage, tls bool, _ error) {
	t := new(Transport)
	if raw != nil {
		var probe struct {
			Protocol string `json:"protocol"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil {
			return nil, false, err
		}
		if probe.Protocol != "http" {
			return raw, false, nil
		}
		if err := json.Unmarshal(raw, &t.HTTPTransport); err != nil {
			return nil, false, err
		}
	}
	if t.KeepAlive == nil {
		t.KeepAlive = new(reverseproxy.KeepAlive)
	}
	if t.KeepAlive.MaxIdleConnsPerHost == 0 {
		t.KeepAlive.MaxIdleConnsPerHost = DefaultIdleConnsPerHost
	}
	return caddyconfig.JSONModuleObject(t, "protocol", "cx", nil), t.TLS != nil, nil
}

// defaultRetryMatch parses DefaultRetryMatch with reverse_proxy's own
// Caddyfile parser, so the defaults are exactly the documented lines.
func defaultRetryMatch() (caddyhttp.RawMatcherSets, error) {
	tokens, err := caddyfile.Tokenize([]byte("reverse_proxy {"+DefaultRetryMatch+"}"), "cx_proxy defaults")
	if err != nil {
		return nil, err
	}
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
		return nil, err
	}
	return rp.LoadBalancing.RetryMatchRaw, nil
}
