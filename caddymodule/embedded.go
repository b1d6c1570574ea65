package caddymodule

import (
	"fmt"
	"net"
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

	mu  sync.Mutex
	srv *server.Server
}

func acquireEmbedded(addr string, logger *zap.Logger) (*embeddedServer, error) {
	val, _, err := embeddedPool.LoadOrNew(addr, func() (caddy.Destructor, error) {
		return &embeddedServer{addr: addr, logger: logger}, nil
	})
	if err != nil {
		return nil, err
	}
	return val.(*embeddedServer), nil
}

// start runs the server if it is not running yet.
func (e *embeddedServer) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		return nil
	}
	host, portStr, err := net.SplitHostPort(e.addr)
	if err != nil {
		return fmt.Errorf("cx: embedded_nats %q: %v", e.addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("cx: embedded_nats %q: port is not a number", e.addr)
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "caddy-cx-embedded",
		Host:       host,
		Port:       port,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return fmt.Errorf("cx: embedded NATS server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(5 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("cx: embedded NATS server could not listen on %s (is the port taken? set `embedded_nats` to another address, or `nats` to use an existing server)", e.addr)
	}
	e.logger.Info("embedded NATS server listening", zap.String("address", e.addr))
	e.srv = srv
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
