package heartbeat

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// wait bounds every wait for something that should happen at once.
const wait = 5 * time.Second

// startServer starts an embedded NATS server on 127.0.0.1:port (-1 picks
// a free port) and shuts it down when the test ends.
func startServer(t *testing.T, port int) *server.Server {
	t.Helper()
	return natstest.Start(t, &server.Options{Port: port})
}

func serverPort(t *testing.T, s *server.Server) int {
	t.Helper()
	addr, ok := s.Addr().(*net.TCPAddr)
	if !ok {
		t.Fatalf("server address %v", s.Addr())
	}
	return addr.Port
}

// gate is a nats.CustomDialer that fails every dial while closed, so that
// a test decides when a client may (re)connect. It never blocks: nats.go
// dials holding the connection's lock.
type gate struct{ open atomic.Bool }

func (g *gate) Dial(network, address string) (net.Conn, error) {
	if !g.open.Load() {
		return nil, errors.New("gate closed")
	}
	var d net.Dialer
	return d.Dial(network, address)
}

// listener receives everything published on one subject.
type listener struct {
	t   *testing.T
	nc  *nats.Conn
	sub string
	ch  chan *nats.Msg
}

func listen(t *testing.T, s *server.Server, subject string) *listener {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l := &listener{t: t, nc: nc, sub: subject, ch: make(chan *nats.Msg, 1024)}
	if _, err := nc.ChanSubscribe(subject, l.ch); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// next returns the next heartbeat, decoded, failing the test after timeout.
func (l *listener) next(timeout time.Duration) *Message {
	l.t.Helper()
	select {
	case msg := <-l.ch:
		m, err := Decode(DefaultPrefix, msg.Subject, msg.Data)
		if err != nil {
			l.t.Fatalf("invalid heartbeat %s: %v", msg.Data, err)
		}
		return m
	case <-time.After(timeout):
		l.t.Fatalf("no heartbeat on %s within %v", l.sub, timeout)
		return nil
	}
}

// rest returns the heartbeats published before now by a connection that
// has been flushed: it publishes a sentinel on the subject and collects
// until the sentinel comes back (the server keeps the order).
func (l *listener) rest() []*Message {
	l.t.Helper()
	if err := l.nc.Publish(l.sub, []byte("sentinel")); err != nil {
		l.t.Fatal(err)
	}
	var ms []*Message
	deadline := time.After(wait)
	for {
		select {
		case msg := <-l.ch:
			if string(msg.Data) == "sentinel" {
				return ms
			}
			m, err := Decode(DefaultPrefix, msg.Subject, msg.Data)
			if err != nil {
				l.t.Fatalf("invalid heartbeat %s: %v", msg.Data, err)
			}
			ms = append(ms, m)
		case <-deadline:
			l.t.Fatal("sentinel did not come back")
		}
	}
}
