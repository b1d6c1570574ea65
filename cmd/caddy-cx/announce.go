package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-cx/caddy-cx/internal/announce"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "announce",
		Usage: announce.Usage,
		Short: "Announces an application that cannot speak the heartbeat protocol (sidecar)",
		Long: `
Publishes the heartbeats of an application (e.g. a .NET application) on NATS so
that caddy-cx gateways route to it: every --interval while --health answers 2xx
(without --health: while --url accepts TCP connections). SIGUSR1 announces
draining, SIGUSR2 ready again; SIGTERM or SIGINT announces leaving and exits 0.

Every flag has an environment variable for containers: CX_NATS, CX_ID, CX_URL,
CX_HEALTH, CX_INTERVAL, CX_HEALTH_TIMEOUT, CX_VERSION, CX_PRIORITY, CX_PREFIX,
CX_CREDENTIALS, CX_TOKEN, CX_USER, CX_PASSWORD, CX_NKEY, CX_TLS_CA, CX_TLS_CERT,
CX_TLS_KEY. A flag wins over its variable. Run with --help for every flag.`,
		CobraFunc: func(cmd *cobra.Command) {
			// The flags are announce's own (package flag), so that the
			// command line and its tests share one parser.
			cmd.DisableFlagParsing = true
			cmd.RunE = func(_ *cobra.Command, args []string) error {
				if code := runAnnounce(args, os.Getenv, os.Stderr); code != 0 {
					os.Exit(code)
				}
				return nil
			}
		},
	})
}

// runAnnounce runs the sidecar and returns the exit code: 0 after
// leaving (or for --help), 2 for bad flags, 1 for other errors.
func runAnnounce(args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := announce.Parse(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "caddy-cx announce: %v\nUsage: caddy-cx announce %s\n", err, announce.Usage)
		return 2
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, announce.Signals()...)
	defer signal.Stop(sigs)
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := announce.Run(context.Background(), cfg, sigs, log); err != nil {
		fmt.Fprintf(stderr, "caddy-cx announce: %v\n", err)
		return 1
	}
	return 0
}
