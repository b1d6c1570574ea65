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

// loopGuard knows the gateway's own HTTP listeners, so that an instance
// url pointing back at the gateway (a loop, by mistake or by a spoofed
// heartbeat) is refused.
type loopGuard struct {
	// any: ports listened on every address; hosts: host -> ports.
	any   map[int]bool
	hosts map[string]map[int]bool
	local map[netip.Addr]bool // this machine's addresses
	names map[string]bool     // names of this machine
}

// newLoopGuard reads the listeners of the http app's servers.
func newLoopGuard(app *caddyhttp.App) *loopGuard {
	g := &loopGuard{any: map[int]bool{}, hosts: map[string]map[int]bool{}, local: localAddrs(), names: localNames()}
	for _, srv := range app.Servers {
		for _, listen := range srv.Listen {
			addr, err := caddy.ParseNetworkAddress(listen)
			if err != nil || addr.IsUnixNetwork() || addr.IsFdNetwork() || addr.PortRangeSize() > 1024 {
				continue
			}
			for p := addr.StartPort; p <= addr.EndPort; p++ {
				g.add(addr.Host, int(p))
			}
		}
	}
	return g
}

func (g *loopGuard) add(host string, port int) {
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		g.any[port] = true
		return
	}
	if g.hosts[host] == nil {
		g.hosts[host] = map[int]bool{}
	}
	g.hosts[host][port] = true
}

// deny says why rawURL points at the gateway itself, or "".
func (g *loopGuard) deny(rawURL string) string {
	if g == nil {
		return ""
	}
	host, portStr, err := net.SplitHostPort(heartbeat.HostPort(rawURL))
	if err != nil {
		return ""
	}
	port, _ := strconv.Atoi(portStr)
	if g.hosts[host][port] || (g.any[port] && g.isLocal(host)) {
		return "url " + rawURL + " points at the gateway's own listener: a loop"
	}
	return ""
}

func (g *loopGuard) isLocal(host string) bool {
	if a, err := netip.ParseAddr(host); err == nil {
		a = a.Unmap()
		return a.IsLoopback() || g.local[a]
	}
	return g.names[strings.ToLower(strings.TrimSuffix(host, "."))]
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
