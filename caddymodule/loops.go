package caddymodule

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// loopGuard knows every address the gateway process listens on (the http
// servers, the admin API, the embedded NATS server), so that an instance
// url or a dialed peer pointing back at the gateway (a loop, by mistake or
// by a spoofed heartbeat) is refused.
type loopGuard struct {
	// any: ports listened on every address; addrs: exact listen
	// addresses (names resolved); hosts: listen host as written -> ports.
	any   map[int]bool
	addrs map[netip.AddrPort]bool
	hosts map[string]map[int]bool
	local map[netip.Addr]bool // this machine's addresses
	names map[string]bool     // names of this machine
}

// newLoopGuard reads the listeners of the http app's servers; extra are
// further listen addresses of the process (admin API, embedded NATS).
func newLoopGuard(app *caddyhttp.App, extra ...string) *loopGuard {
	g := &loopGuard{any: map[int]bool{}, addrs: map[netip.AddrPort]bool{}, hosts: map[string]map[int]bool{},
		local: localAddrs(), names: localNames()}
	var listens []string
	if app != nil {
		for _, srv := range app.Servers {
			listens = append(listens, srv.Listen...)
		}
	}
	for _, listen := range append(listens, extra...) {
		addr, err := caddy.ParseNetworkAddress(listen)
		if err != nil || addr.IsUnixNetwork() || addr.IsFdNetwork() || addr.PortRangeSize() > 1024 {
			continue
		}
		for p := addr.StartPort; p <= addr.EndPort; p++ {
			g.add(addr.Host, int(p))
		}
	}
	return g
}

func (g *loopGuard) add(host string, port int) {
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		g.any[port] = true
		return
	} else if err == nil {
		g.addrs[netip.AddrPortFrom(a.Unmap(), uint16(port))] = true
	} else {
		for _, ip := range g.resolveLocal(host) {
			g.addrs[netip.AddrPortFrom(ip, uint16(port))] = true
		}
	}
	if g.hosts[host] == nil {
		g.hosts[host] = map[int]bool{}
	}
	g.hosts[host][port] = true
}

// resolveLocal returns the addresses of a listen host name. Only names of
// this machine are looked up (a listener cannot bind elsewhere), so that
// building the guard never waits on DNS for a foreign name.
func (g *loopGuard) resolveLocal(host string) []netip.Addr {
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if !g.names[name] {
		return nil
	}
	out := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	if name == "localhost" {
		return out
	}
	for a := range g.local {
		out = append(out, a)
	}
	return out
}

// deny says why rawURL points at the gateway itself, or "". It is the
// heartbeat-time check: it never resolves a name (a heartbeat must not
// make the gateway query DNS); the dial-time guard checks resolved peers.
func (g *loopGuard) deny(rawURL string) string {
	host, portStr, err := net.SplitHostPort(heartbeat.HostPort(rawURL))
	if err != nil {
		return ""
	}
	port, _ := strconv.Atoi(portStr)
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsUnspecified() {
		return "url " + rawURL + " has an unspecified address, which reaches this machine's own listeners: a loop"
	}
	if g == nil {
		return ""
	}
	if g.hosts[host][port] || g.hostOwned(host, port) {
		return "url " + rawURL + " points at the gateway's own listener: a loop"
	}
	return ""
}

// hostOwned reports whether host (an IP literal or a name of this
// machine) at port reaches one of the gateway's listeners.
func (g *loopGuard) hostOwned(host string, port int) bool {
	if ip, err := netip.ParseAddr(host); err == nil {
		return g.owns(ip, port)
	}
	for _, ip := range g.resolveLocal(host) {
		if g.owns(ip, port) {
			return true
		}
	}
	return false
}

// owns reports whether a connection to ip:port reaches one of the
// gateway's own listeners: those of the config (http servers, admin API,
// embedded NATS), re-read on every config load. Other sockets of the
// process are not refused: the demo, and applications that embed the
// gateway, run their instances in the same process. A nil guard (no
// config started yet) knows none.
func (g *loopGuard) owns(ip netip.Addr, port int) bool {
	ip = ip.Unmap().WithZone("")
	if g == nil {
		return false
	}
	if g.addrs[netip.AddrPortFrom(ip, uint16(port))] {
		return true
	}
	return g.any[port] && (ip.IsLoopback() || ip.IsUnspecified() || g.local[ip])
}

func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out
}

func localNames() map[string]bool {
	out := map[string]bool{"localhost": true}
	if h, err := os.Hostname(); err == nil {
		out[strings.ToLower(h)] = true
	}
	return out
}
