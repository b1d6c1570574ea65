package demo

import (
	"fmt"
	"net"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	// the gateway's Caddyfile uses cx_proxy and cx_status
	_ "github.com/caddy-cx/caddy-cx/caddymodule"
)

// gateway is the in-process Caddy running the demo's Caddyfile.
type gateway struct {
	caddyfile string
}

// caddyfileFor is the demo gateway's configuration: an embedded NATS
// server, one site with cx_proxy (routing one version at a time, so that the
// drill's deploy switches clients once) and cx_status at /ha.
func caddyfileFor(o *Options) string {
	return demoCaddyfile(o, fmt.Sprintf("embedded_nats 127.0.0.1:%d%s", o.NATSPort, gatewayIDLine(o)), o.Port, o.AdminPort)
}

// demoCaddyfile is a demo gateway's configuration with the given cx
// options, site and admin ports.
func demoCaddyfile(o *Options, cxOptions string, sitePort, adminPort int) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	servers {
		protocols h1
	}
	log {
		level %s
	}
	cx {
		%s
	}
}

http://:%d {
	bind 127.0.0.1
	cx_proxy {
		subject_prefix %s
		versions consistent
	}
	cx_status /ha
}
`, adminPort, o.logLevel(), cxOptions, sitePort, o.Prefix)
}

// gatewayIDLine names gateway 1 when the demo runs several (the host
// name, the default, otherwise).
func gatewayIDLine(o *Options) string {
	if o.Gateways > 1 {
		return "\n\t\tgateway_id gw1"
	}
	return ""
}

// startGateway adapts and loads the demo Caddyfile.
func startGateway(o *Options) (*gateway, error) {
	g := &gateway{caddyfile: caddyfileFor(o)}
	cfg, err := adapt(g.caddyfile)
	if err != nil {
		return nil, err
	}
	if err := caddy.Load(cfg, true); err != nil {
		return nil, fmt.Errorf("demo: starting the gateway: %w", err)
	}
	return g, nil
}

func adapt(caddyfile string) ([]byte, error) {
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		return nil, fmt.Errorf("demo: adapting the gateway's Caddyfile: %w", err)
	}
	return cfg, nil
}

func (g *gateway) stop() error { return caddy.Stop() }

// claimPort returns port if it is free on 127.0.0.1, or a free port if
// port is 0. flag names the option that sets it, for the error.
func claimPort(port int, flag string) (int, error) {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return 0, fmt.Errorf("port %d is taken (%v); choose another with %s N, or %s 0 for any free port", port, err, flag, flag)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
