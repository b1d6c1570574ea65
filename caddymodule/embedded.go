package caddymodule

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// embeddedPool holds embedded NATS servers by listen address, so a reload
// keeps the server (and every instance connected to it) running.
var embeddedPool = caddy.NewUsagePool()

// embeddedServer is a NATS server inside the gateway process, for
// single-machine deployments and the demo.
type embeddedServer struct {
	addr   string
	logger *zap.Logger

	mu   sync.Mutex
	srv  *server.Server
	auth embeddedAuth // what clients must present; the latest config's
	// running is what srv requires now; host and port where it listens.
	running embeddedAuth
	host    string
	port    int
}

// embeddedAuth is the authorization the embedded server requires: the
// app's own token, or user and password; none when both are empty.
type embeddedAuth struct {
	token, user, password string
}

func (e embeddedAuth) set() bool { return e.token != "" || e.user != "" }

// apply sets e on the server options.
func (e embeddedAuth) apply(o *server.Options) {
	o.Authorization, o.Username, o.Password = e.token, e.user, e.password
}

// embeddedAuth is the authorization the embedded server requires: the
// app's token or user and password, which the gateway connects with.
func (a *App) embeddedAuth() embeddedAuth {
	return embeddedAuth{token: a.auth.Token, user: a.auth.User, password: a.auth.Password}
}

// validateEmbedded refuses what the embedded server cannot enforce, and
// an embedded server open to the network without authentication: whoever
// reaches it could announce instances and take the gateway's traffic.
func (a *App) validateEmbedded() error {
	addr := a.EmbeddedNATS
	if addr == "" {
		addr = DefaultEmbeddedNATS
	}
	if a.auth.Credentials != "" || a.auth.NKey != "" {
		return fmt.Errorf("cx: the embedded NATS server takes `token` or `user` and `password`; for nkeys or JWT credentials run nats-server and point `nats` at it")
	}
	host, _, _ := net.SplitHostPort(addr)
	if !a.embeddedAuth().set() && !loopbackHost(host) {
		return fmt.Errorf("cx: embedded_nats %s is reachable beyond this machine and has no authentication: anyone reaching it could announce instances and receive the gateway's traffic. "+
			"Set `token {env.NATS_TOKEN}` (or `user <name> {env.NATS_PASSWORD}`) in the cx block: the embedded server then requires it and instances connect with it; "+
			"or bind to 127.0.0.1; or run nats-server with a user per instance and set `nats`", addr)
	}
	return nil
}

// loopbackHost reports whether host names this machine only.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func acquireEmbedded(addr string, auth embeddedAuth, logger *zap.Logger) (*embeddedServer, error) {
	val, _, err := embeddedPool.LoadOrNew(addr, func() (caddy.Destructor, error) {
		return &embeddedServer{addr: addr, logger: logger}, nil
	})
	if err != nil {
		return nil, err
	}
	e := val.(*embeddedServer)
	e.mu.Lock()
	e.auth = auth
	e.mu.Unlock()
	return e, nil
}

// start runs the server if it is not running yet.
func (e *embeddedServer) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		return e.reauth()
	}
	host, portStr, err := net.SplitHostPort(e.addr)
	if err != nil {
		return fmt.Errorf("cx: embedded_nats %q: %v", e.addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("cx: embedded_nats %q: port is not a number", e.addr)
	}
	e.host, e.port = host, port
	srv, err := server.NewServer(e.options())
	if err != nil {
		return fmt.Errorf("cx: embedded NATS server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(5 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("cx: embedded NATS server could not listen on %s (is the port taken? set `embedded_nats` to another address, or `nats` to use an existing server)", e.addr)
	}
	e.logger.Info("embedded NATS server listening", zap.String("address", e.addr), zap.Bool("authentication", e.auth.set()),
		zap.String("jetstream_store", embeddedStoreDir(e.addr)))
	e.srv, e.running = srv, e.auth
	return nil
}

func (e *embeddedServer) options() *server.Options {
	opts := &server.Options{
		ServerName: "caddy-cx-embedded",
		Host:       e.host,
		Port:       e.port,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 1 << 20,
		// JetStream holds the control bucket (drain and maintenance
		// survive restarts); its store is per listen address, so that two
		// embedded servers on one machine never share one.
		JetStream: true,
		StoreDir:  embeddedStoreDir(e.addr),
	}
	e.auth.apply(opts)
	return opts
}

// embeddedStoreDir is where the embedded server listening on addr keeps
// its JetStream data: under Caddy's data directory, named after addr.
func embeddedStoreDir(addr string) string {
	return filepath.Join(caddy.AppDataDir(), "cx", "jetstream", sanitizeAddr(addr))
}

// sanitizeAddr makes a file name of a listen address: every character
// but letters, digits, '.' and '-' becomes '_' ("[::1]:4222" is
// "___1__4222", "127.0.0.1:4222" is "127.0.0.1_4222").
func sanitizeAddr(addr string) string {
	b := []byte(addr)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			b[i] = '_'
		}
	}
	if s := string(b); s != "" && s != "." && s != ".." {
		return s
	}
	return "_"
}

// reauth makes the running server require the latest config's
// authorization, when a reload changed it.
func (e *embeddedServer) reauth() error {
	if e.running == e.auth {
		return nil
	}
	if err := e.srv.ReloadOptions(e.options()); err != nil {
		return fmt.Errorf("cx: changing the embedded NATS server's authentication: %w", err)
	}
	e.running = e.auth
	e.logger.Info("embedded NATS server authentication changed", zap.Bool("authentication", e.auth.set()))
	return nil
}

// Destruct shuts the server down when no config uses it any more.
func (e *embeddedServer) Destruct() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
		e.srv = nil
	}
	return nil
}
