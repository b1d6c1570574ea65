package cxcmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-cx/caddy-cx/internal/demo"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "demo",
		Usage: "[--port 8080] [--drill [--duration 2s]] [--interval 250ms] [--admin-port 2019] [--nats-port 4222] [--gateways 1]",
		Short: "Runs the whole topology on this machine: NATS, the gateway, three instances",
		Long: `
Runs an embedded NATS server, the gateway (a Caddyfile built in memory: the cx
app with embedded_nats, a site with cx_proxy and cx_status /ha) and three demo
instances that announce themselves: app1 (priority 0, the primary), app2 and
app3 (priority 1, the backups). Each serves a page naming itself and a
WebSocket echo at /ws. It prints the URLs to open and a live log of membership,
one line per change. Ctrl-C stops everything.

With --drill it runs a scripted failover drill under load instead: kill the
primary, hang it, roll all three, deploy a new version one instance at a time
(routing one version at a time: clients switch versions exactly once); then prints requests, client-visible errors
and time to fail over per step, and exits 0 only if no client saw an error.

With --gateways N (up to 9) it runs N gateways on the one embedded NATS
server, a fleet: gw1 in this process, gw2..gwN as child processes of this
program on free ports (stopped with it, even if it is killed). Each has its
status page, whose Gateways section lists them all, and its admin API, where
POST /cx/instances/<id>/drain (or /maintenance, /ready) applies to every
gateway.

Every port is on 127.0.0.1; 0 picks a free one.`,
		CobraFunc: func(cmd *cobra.Command) {
			f := cmd.Flags()
			f.Int("port", 8080, "port of the site")
			f.Int("admin-port", 2019, "port of Caddy's admin API and metrics")
			f.Int("nats-port", 4222, "port of the embedded NATS server")
			f.Duration("interval", 250*time.Millisecond, "heartbeat interval of the demo instances")
			f.Bool("drill", false, "run the failover drill and exit")
			f.Duration("duration", 2*time.Second, "with --drill: how long the load runs after each fault")
			f.Int("clients", 8, "with --drill: concurrent clients")
			f.BoolP("verbose", "v", false, "show the gateway's info logs")
			f.Int("gateways", 1, "gateways on the embedded NATS (2 or more: a fleet; the others run as child processes)")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdDemo)
		},
	})
}

func cmdDemo(fl caddycmd.Flags) (int, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	_, err := demo.Run(ctx, demo.Options{
		Port:      fl.Int("port"),
		AdminPort: fl.Int("admin-port"),
		NATSPort:  fl.Int("nats-port"),
		Interval:  fl.Duration("interval"),
		Drill:     fl.Bool("drill"),
		Duration:  fl.Duration("duration"),
		Clients:   fl.Int("clients"),
		Verbose:   fl.Bool("verbose"),
		Gateways:  fl.Int("gateways"),
		Out:       os.Stdout,
	})
	switch {
	case errors.Is(err, context.Canceled):
		return 0, nil
	case errors.Is(err, demo.ErrDrillErrors):
		return 1, err
	case err != nil:
		return 1, fmt.Errorf("demo: %w", err)
	}
	return 0, nil
}
