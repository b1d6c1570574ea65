package caddymodule

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/redact"
)

func init() {
	caddy.RegisterModule(App{})
}

// DefaultEmbeddedNATS is where the embedded NATS server listens when no
// `nats` servers are configured.
const DefaultEmbeddedNATS = "127.0.0.1:4222"

// App is the `cx` app: the NATS connection the gateway hears instances on.
// Without NATS servers configured it runs an embedded NATS server. The
// connection (and embedded server) is shared across config reloads.
type App struct {
	// NATS server URLs to connect to (nats://host:port, tls://host:port).
	// Several URLs are tried in turn and used for reconnects. When empty,
	// an embedded NATS server is started and used. A URL may carry user
	// info, but the config (GET /config/) then shows it: prefer `user` and
	// `password` or `token` with a placeholder. Placeholders are resolved
	// as for the Auth settings.
	NATS []string `json:"nats,omitempty"`

	// EmbeddedNATS is the host:port the embedded NATS server listens on
	// when NATS is empty. Default: 127.0.0.1:4222. An address beyond
	// loopback (0.0.0.0:4222, a LAN address) is refused unless Token or
	// User and Password are set: the embedded server then requires them
	// of every client, the gateway and the instances alike.
	EmbeddedNATS string `json:"embedded_nats,omitempty"`

	// Auth is how the gateway authenticates to NATS and secures the
	// connection: `credentials` (a JWT .creds file), `token`, `user` with
	// `password`, or `nkey` (a file holding an nkey seed), and `tls` (`ca`,
	// `cert`, `key`). Its fields sit inline in the app's JSON; the sidecar
	// (`caddy-cx announce`) takes the same settings with the same rules.
	//
	// Every field but tls may be, or contain, a Caddy placeholder such as
	// {env.NATS_TOKEN} or {file./run/secrets/nats_token}, resolved once
	// when the config is loaded, so that the config Caddy serves at GET
	// /config/ holds the placeholder, not the secret. A placeholder that
	// resolves to nothing (unset variable, unreadable or empty file) is an
	// error naming it; write a literal brace as \{ or \}.
	heartbeat.Auth

	// GatewayID names this gateway to the other gateways of its fleet:
	// its heartbeats go out on PREFIX.gw.<gateway_id>, its shared failures
	// on PREFIX.obs.<gateway_id>, and control entries it writes say it.
	// 1 to 64 characters of A-Z a-z 0-9 _ -, unique per gateway in a
	// fleet. Default: the host name (other characters replaced by -).
	GatewayID string `json:"gateway_id,omitempty"`

	// auth is the above with placeholders resolved; see secrets.go.
	auth natsAuth

	link     *natsLink
	linkKey  string
	embedded *embeddedServer
	logger   *zap.Logger
	ctx      caddy.Context

	mu       *sync.Mutex
	services []*Service
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "cx",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision validates the configuration and takes (or creates) the shared
// connection. It does no network I/O: the connection is made in Start.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.ctx = ctx
	a.mu = new(sync.Mutex)
	if err := a.resolveSecrets(); err != nil {
		return err
	}
	if err := a.validate(); err != nil {
		return err
	}
	if err := a.setGatewayID(); err != nil {
		return err
	}
	urls := a.auth.URLs
	if len(urls) == 0 {
		if a.EmbeddedNATS == "" {
			a.EmbeddedNATS = DefaultEmbeddedNATS
		}
		emb, err := acquireEmbedded(a.EmbeddedNATS, a.embeddedAuth(), a.logger)
		if err != nil {
			return err
		}
		a.embedded = emb
		urls = []string{"nats://" + a.EmbeddedNATS}
	}
	conn := a.auth
	conn.URLs = urls
	key, err := conn.key()
	if err != nil {
		return err
	}
	a.linkKey = key
	link, err := acquireLink(a.linkKey, urls, a.options, a.logger)
	if err != nil {
		return err
	}
	a.link = link
	return nil
}

// validate checks the resolved settings: the servers' URLs, embedded or
// external, and the authentication rules shared with the sidecar.
func (a *App) validate() error {
	for _, u := range a.auth.URLs {
		if err := heartbeat.ValidServerURL(u); err != nil {
			return fmt.Errorf("cx: nats server %q: %v", redact.URL(u), err)
		}
	}
	if len(a.NATS) > 0 && a.EmbeddedNATS != "" {
		return fmt.Errorf("cx: use either `nats` (external servers) or `embedded_nats`, not both")
	}
	if a.EmbeddedNATS != "" {
		if _, _, err := net.SplitHostPort(a.EmbeddedNATS); err != nil {
			return fmt.Errorf("cx: embedded_nats %q must be host:port: %v", a.EmbeddedNATS, err)
		}
	}
	if err := a.auth.Auth.Validate(); err != nil {
		return fmt.Errorf("cx: %w", err)
	}
	if len(a.NATS) == 0 {
		return a.validateEmbedded()
	}
	return nil
}

// Start starts the embedded server (if any), connects to NATS and starts
// watching every service this config uses.
func (a *App) Start() error {
	a.warnUnprotectedStatus()
	if a.embedded != nil {
		if err := a.embedded.start(); err != nil {
			return err
		}
	}
	a.link.logs.follow(a.logger)
	if err := a.link.start(); err != nil {
		return err
	}
	guard := a.loopGuard()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.services {
		s.loops.Store(guard)
		// this config's settings and log take over the live service
		if err := s.use(s.claimOf(a)); err != nil {
			return fmt.Errorf("cx: subject_prefix %s: %v", s.prefix, err)
		}
		if err := s.start(a.link.conn()); err != nil {
			return err
		}
	}
	return nil
}

// loopGuard reads this config's listeners (http servers, admin API,
// embedded NATS), so that instances cannot point traffic back at the
// gateway; every dial then checks against it too (gatewayListeners).
func (a *App) loopGuard() *loopGuard {
	var httpApp *caddyhttp.App
	if app, err := a.ctx.AppIfConfigured("http"); err == nil {
		httpApp, _ = app.(*caddyhttp.App)
	}
	g := newLoopGuard(httpApp, a.listenAddrs()...)
	gatewayListeners.Store(g)
	return g
}

// loopbackOnly reports whether the gateway's NATS is on this machine only
// (the embedded server on a loopback address, or external servers on
// loopback): a test or demo deployment.
func (a *App) loopbackOnly() bool {
	hosts := []string{}
	for _, u := range a.auth.URLs {
		if parsed, err := url.Parse(u); err == nil {
			hosts = append(hosts, parsed.Hostname())
		}
	}
	if len(a.NATS) == 0 {
		host, _, _ := net.SplitHostPort(a.EmbeddedNATS)
		hosts = append(hosts, host)
	}
	for _, h := range hosts {
		ip, err := netip.ParseAddr(h)
		if h != "localhost" && (err != nil || !ip.IsLoopback()) {
			return false
		}
	}
	return true
}

// Stop does nothing: the connection, embedded server and watchers outlive
// a config reload, and are released in Cleanup when no config uses them.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's hold on the shared connection, embedded
// server and services.
func (a *App) Cleanup() error {
	a.mu.Lock()
	services := a.services
	a.services = nil
	a.mu.Unlock()
	for _, s := range services {
		s.release(s.claimOf(a))
	}
	if a.link != nil {
		_, _ = linkPool.Delete(a.linkKey)
	}
	if a.embedded != nil {
		_, _ = embeddedPool.Delete(a.embedded.addr)
	}
	return nil
}

// Service returns the service of one subject prefix on this config's
// NATS connection: the live one across reloads, which takes set when this
// config starts. Two sites of this config naming one prefix share it, and
// must ask the same settings of it.
func (a *App) Service(set serviceSettings) (*Service, error) {
	if set.membership.Prefix == "" {
		set.membership.Prefix = heartbeat.DefaultPrefix
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.services {
		if s.prefix != set.membership.Prefix {
			continue
		}
		if diff := s.claimOf(a).settings.differences(set); len(diff) > 0 {
			return nil, sharedPrefixError(s.prefix, diff)
		}
		return s, nil
	}
	if err := set.membership.Validate(); err != nil {
		return nil, fmt.Errorf("cx: %v", err)
	}
	s, err := acquireService(a.link, &claim{owner: a, settings: set, logger: a.logger})
	if err != nil {
		return nil, err
	}
	a.services = append(a.services, s)
	return s, nil
}

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
