package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("cx", parseGlobalCx)
}

// parseGlobalCx sets up the `cx` app from the global option. Syntax:
//
//	cx {
//		nats <url...>
//		embedded_nats <host:port>
//		credentials <file>
//		token <token>
//		user <user> <password>
//		nkey <seed file>
//		tls {
//			ca <file>
//			cert <file> <key file>
//		}
//		gateway_id <id>
//	}
//
// Secrets take placeholders resolved when the config loads, so that the
// adapted JSON config (and GET /config/) holds no secret:
// `token {env.NATS_TOKEN}`, `user gw {file./run/secrets/nats_password}`.
// ({$NATS_TOKEN} would be replaced by the Caddyfile adapter, into the
// JSON config.)
func parseGlobalCx(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "cx", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if err := a.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

func (a *App) unmarshalOption(d *caddyfile.Dispenser) error {
	switch opt := d.Val(); opt {
	case "nats":
		a.NATS = append(a.NATS, d.RemainingArgs()...)
		if len(a.NATS) == 0 {
			return d.Errf("nats needs at least one server URL, like nats://127.0.0.1:4222")
		}
	case "embedded_nats":
		return oneArg(d, &a.EmbeddedNATS)
	case "credentials":
		return oneArg(d, &a.Credentials)
	case "token":
		return oneArg(d, &a.Token)
	case "nkey":
		return oneArg(d, &a.NKey)
	case "user":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("user takes a user name and a password")
		}
		a.User, a.Password = args[0], args[1]
	case "tls":
		return a.unmarshalTLS(d)
	case "gateway_id":
		return oneArg(d, &a.GatewayID)
	default:
		return d.Errf("unknown cx option %q; allowed: nats, embedded_nats, credentials, token, user, nkey, tls, gateway_id", opt)
	}
	return nil
}

func (a *App) unmarshalTLS(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	a.TLS = new(heartbeat.TLS)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "ca":
			if err := oneArg(d, &a.TLS.CA); err != nil {
				return err
			}
		case "cert":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("cert takes a certificate file and a key file")
			}
			a.TLS.Cert, a.TLS.Key = args[0], args[1]
		default:
			return d.Errf("unknown cx tls option %q; allowed: ca, cert", opt)
		}
	}
	return nil
}

// oneArg reads exactly one argument into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s needs a value", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s takes one value, got more", name)
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*App)(nil)
