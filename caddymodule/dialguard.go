package caddymodule

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// Reasons a dial is refused.
const (
	refusedLoop    = "loop"    // the gateway's own listener, or an unspecified address
	refusedNetwork = "network" // outside allow_networks; link-local or cloud metadata when unset
)

// gatewayListeners is what the running config listens on, set when the
// cx app starts (every config load and reload), read on every dial.
var gatewayListeners atomic.Pointer[loopGuard]

// metadataNetworks are refused when allow_networks is not set: link-local
// addresses (where cloud metadata services answer, with credentials) and
// the AWS IPv6 metadata address.
var metadataNetworks = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// dialPolicy decides which peers a connection may go to.
type dialPolicy struct {
	loops    *loopGuard
	allow    []netip.Prefix // empty: anywhere but metadataNetworks
	refusals *dialRefusals
}

// check returns why the peer ip:port is refused ("" if it is not) and a
// description for the log.
func (p dialPolicy) check(ip netip.Addr, port int) (reason, detail string) {
	ip = ip.Unmap().WithZone("")
	peer := netip.AddrPortFrom(ip, uint16(port)).String()
	switch {
	case ip.IsUnspecified():
		return refusedLoop, peer + " is an unspecified address, which reaches this machine's own listeners"
	case p.loops.owns(ip, port):
		return refusedLoop, peer + " is one of the gateway's own listeners"
	case len(p.allow) > 0:
		if membership.InNetworks(p.allow, ip) {
			return "", ""
		}
		return refusedNetwork, peer + " is outside allow_networks"
	case membership.InNetworks(metadataNetworks, ip):
		return refusedNetwork, peer + " is link-local or a cloud metadata address (set allow_networks to allow it)"
	}
	return "", ""
}

// refuse counts and logs a refusal and returns the error for the dial.
func (p dialPolicy) refuse(reason, detail string) error {
	p.refusals.add(reason, detail)
	return &dialRefusedError{reason: reason, detail: detail}
}

// checkAddr checks a connected peer; addresses that are not IP (unix
// sockets) are not the guard's business.
func (p dialPolicy) checkAddr(a net.Addr) error {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return nil
	}
	ip, ok := netip.AddrFromSlice(tcp.IP)
	if !ok {
		return nil
	}
	if reason, detail := p.check(ip, tcp.Port); reason != "" {
		return p.refuse(reason, detail)
	}
	return nil
}

// dialRefusedError is a dial the guard refused.
type dialRefusedError struct{ reason, detail string }

func (e *dialRefusedError) Error() string {
	return "cx: dial refused (" + e.reason + "): " + e.detail
}

// defaultRefusals counts refusals of dials not made for a cx service (the
// cx transport behind another upstream source).
var defaultRefusals = newDialRefusals(nil)

// defaultPolicy is the policy of a dial not made for a cx service.
func defaultPolicy() dialPolicy {
	return dialPolicy{loops: gatewayListeners.Load(), refusals: defaultRefusals}
}

// dialPolicy is the policy of dials for this service's instances.
func (s *Service) dialPolicy() dialPolicy {
	return dialPolicy{loops: gatewayListeners.Load(), allow: s.allowNetworks(), refusals: s.refusals}
}

// policyFor returns the policy of the service a request was routed by:
// http.Transport dials with the request's context, which carries the
// request's variables.
func policyFor(ctx context.Context) dialPolicy {
	if c := poolIn(ctx); c != nil && c.svc != nil {
		return c.svc.dialPolicy()
	}
	return defaultPolicy()
}

// DialRefusals returns how many dials to this service's instances were
// refused, by reason (loop, network).
func (s *Service) DialRefusals() map[string]uint64 { return s.refusals.counts() }

// dialRefusalLogEvery bounds how often refusals of one reason are logged.
const dialRefusalLogEvery = 5 * time.Second

// dialRefusals counts refused dials by reason and logs them, at most one
// line per reason per dialRefusalLogEvery, with the number not logged.
type dialRefusals struct {
	logger *zap.Logger // nil: caddy.Log()
	// count: reason -> *atomic.Uint64; a service's counts live in its
	// pooled stats, so that they survive reloads as a metric.
	count *sync.Map
	logs  *logLimiter
	now   func() time.Time
}

func newDialRefusals(logger *zap.Logger) *dialRefusals {
	return &dialRefusals{logger: logger, count: new(sync.Map), logs: oncePer(dialRefusalLogEvery), now: time.Now}
}

func (r *dialRefusals) add(reason, detail string) {
	if r == nil {
		return
	}
	counterOf(r.count, reason).Add(1)
	suppressed, ok := r.logs.due(reason, r.now())
	if !ok {
		return
	}
	logger := r.logger
	if logger == nil {
		logger = caddy.Log().Named("cx")
	}
	logger.Warn("dial refused", zap.String("reason", reason), zap.String("detail", detail),
		zap.Int("similar_refusals_not_logged", suppressed))
}

func (r *dialRefusals) counts() map[string]uint64 {
	out := map[string]uint64{}
	if r == nil {
		return out
	}
	r.count.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// dialFunc is the signature of http.Transport's dial hooks.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// guardDial wraps one of Caddy's dial functions.
//
// Caddy builds its net.Dialer inside HTTPTransport.NewTransport, so no
// Control hook can be set on it, and replicating its dial (DialInfo
// address, resolver, local address, keep-alive, PROXY protocol, read and
// write timeouts) would drift from Caddy's. So the guard checks twice:
// before dialing, the upstream address (an IP literal, or every address a
// name resolves to now), so that in the usual case not even a SYN reaches
// a refused peer; and after, the peer address of the connection actually
// established, which is what a name resolved to at dial time (DNS
// rebinding cannot slip through). The connection is closed before the
// transport writes any HTTP byte on it (with proxy_protocol or a TLS
// server name placeholder, Caddy's dial has sent the PROXY header or TLS
// handshake by then: the check before dialing stops those in every case
// but rebinding). A refusal is a dial error, so the request is retried
// on another instance like after any dial error.
func (t *Transport) guardDial(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		policy := policyFor(ctx)
		target := addr
		if di, ok := reverseproxy.GetDialInfo(ctx); ok {
			target = di.Address // what Caddy's dial connects to
		}
		if err := t.preCheck(ctx, policy, target); err != nil {
			return nil, reverseproxy.NewDialError(err)
		}
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := policy.checkAddr(conn.RemoteAddr()); err != nil {
			_ = conn.Close()
			return nil, reverseproxy.NewDialError(err)
		}
		return conn, nil
	}
}

// preCheck refuses target when its literal address, or every address its
// name resolves to, is refused. With a custom resolver configured the
// name is not resolved here (the check after connecting still applies).
func (t *Transport) preCheck(ctx context.Context, policy dialPolicy, target string) error {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return nil
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if reason, detail := policy.check(ip, port); reason != "" {
			return policy.refuse(reason, detail)
		}
		return nil
	}
	if t.Resolver != nil {
		return nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return nil // the dial fails the same way
	}
	var reason, detail string
	for _, ip := range ips {
		if reason, detail = policy.check(ip, port); reason == "" {
			return nil
		}
	}
	return policy.refuse(reason, host+" resolves to "+detail)
}

// Provision sets up Caddy's http transport, then puts the dial guard on
// every connection it makes.
func (t *Transport) Provision(ctx caddy.Context) error {
	for _, v := range t.Versions {
		if v == "3" {
			return fmt.Errorf("cx transport: HTTP/3 to instances is not supported: its connections bypass the guard on where traffic may go; use versions 1.1 2 or h2c")
		}
	}
	if len(t.NetworkProxyRaw) != 0 || t.ForwardProxyURL != "" {
		return fmt.Errorf("cx transport: network_proxy is not supported: through a proxy the gateway cannot see which address it reaches; instances are dialed directly")
	}
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	// An environment proxy (HTTP_PROXY) would hide the instance behind
	// the proxy's address: instances are dialed directly.
	t.Transport.Proxy = nil
	t.Transport.DialContext = t.guardDial(t.Transport.DialContext)
	if t.Transport.DialTLSContext != nil {
		// Caddy's TLS dial uses its plain dial directly, not through
		// DialContext: guard it too.
		t.Transport.DialTLSContext = t.guardDial(t.Transport.DialTLSContext)
	}
	return nil
}

// guardedDialer is a dialer of our own (the confirm_with probe) that
// checks each address just before connecting: Control sees the resolved
// IP of every attempt, so nothing is sent to a refused peer, not even a
// SYN.
func guardedDialer(policy func() dialPolicy, timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return nil
		}
		p := policy()
		if reason, detail := p.check(ap.Addr(), int(ap.Port())); reason != "" {
			return p.refuse(reason, detail)
		}
		return nil
	}}
}

// listenAddrs are the process's listen addresses besides the http
// servers': the admin API (local and remote) and the embedded NATS.
func (a *App) listenAddrs() []string {
	out := adminListens(a.ctx)
	if a.embedded != nil {
		out = append(out, a.EmbeddedNATS)
	}
	sort.Strings(out)
	return out
}

// unmapNetworks turns IPv4-mapped IPv6 networks into IPv4 ones, since
// peers are compared unmapped.
func unmapNetworks(nets []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(nets))
	for _, n := range nets {
		out = append(out, membership.UnmapPrefix(n))
	}
	return out
}
