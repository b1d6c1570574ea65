// Package cxcmd registers caddy-cx's subcommands with Caddy's command
// line: `caddy-cx announce` (the sidecar) and `caddy-cx demo`. A Caddy
// build gets them by importing this package, as cmd/caddy-cx does (or
// xcaddy with --with github.com/caddy-cx/caddy-cx/cxcmd).
package cxcmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/caddyserver/caddy/v2"
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

Every flag has an environment variable for containers, shown in its help:
` + announce.Env + `.
A flag wins over its variable. Bad flags exit 2.`,
		CobraFunc: announceCommand,
	})
}

// announceCommand gives the command the sidecar's flags; they are parsed
// by cobra, so that `caddy-cx help announce` and --help list them.
func announceCommand(cmd *cobra.Command) {
	cfg := announce.NewConfig(cmd.Flags())
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return exit(cmd, 2, err)
	})
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := cfg.Load(cmd.Flags(), os.Getenv); err != nil {
			return exit(cmd, 2, err)
		}
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, announce.Signals()...)
		defer signal.Stop(sigs)
		if err := announce.Run(context.Background(), cfg, sigs, caddy.Log().Named("announce")); err != nil {
			return exit(cmd, 1, err)
		}
		return nil
	}
}

// exit ends the command with code, logging err as Caddy's own commands
// do; a bad flag's error points at the help.
func exit(cmd *cobra.Command, code int, err error) error {
	if code == 2 {
		err = fmt.Errorf("%w (every flag: caddy-cx help %s)", err, cmd.Name())
	}
	return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) { return code, err })(cmd, nil)
}
