package membership

import (
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// natsServer is an embedded NATS server on 127.0.0.1 that can be stopped
// and started again on the same port.
type natsServer struct {
	t    testing.TB
	port int
	srv  *server.Server
}

// startNATS starts a server on a random port; it is shut down at the end
// of the test.
func startNATS(t testing.TB) *natsServer {
	t.Helper()
	ns := &natsServer{t: t, port: server.RANDOM_PORT}
	ns.start()
	ns.port = ns.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(ns.stop)
	return ns
}

func (ns *natsServer) start() {
	ns.t.Helper()
	ns.srv = natstest.Start(ns.t, &server.Options{Port: ns.port})
}

// restart starts a stopped server again on the same port.
func (ns *natsServer) restart() { ns.t.Helper(); ns.start() }

func (ns *natsServer) stop() {
	if ns.srv != nil {
		ns.srv.Shutdown()
		ns.srv.WaitForShutdown()
		ns.srv = nil
	}
}

func (ns *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(ns.port) }

// gate is a dialer the test can close, to hold a client off a server that
// is up (for example until the test's own subscriptions are in place).
type gate struct{ closed atomic.Bool }

var errGateClosed = errors.New("test gate closed")

func (g *gate) Dial(network, address string) (net.Conn, error) {
	if g.closed.Load() {
		return nil, errGateClosed
	}
	return (&net.Dialer{Timeout: 2 * time.Second}).Dial(network, address)
}

// connect opens a client that reconnects for ever, quickly.
func connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(20 * time.Millisecond),
		nats.ReconnectJitter(0, 0),
		nats.ReconnectBufSize(-1), // heartbeats are never replayed
		nats.Timeout(2 * time.Second),
	}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
