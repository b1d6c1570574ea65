package announce

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

const wait = 5 * time.Second

func startNATS(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	return natstest.Start(t, opts)
}

// healthServer is a real health endpoint whose answer the test switches;
// every check it answers is reported on hits.
type healthServer struct {
	*httptest.Server
	up   atomic.Bool
	hits chan int
}

func startHealth(t *testing.T, up bool) *healthServer {
	t.Helper()
	h := &healthServer{hits: make(chan int, 1024)}
	h.up.Store(up)
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := http.StatusServiceUnavailable
		if h.up.Load() {
			code = http.StatusNoContent
		}
		w.WriteHeader(code)
		h.hits <- code
	}))
	t.Cleanup(h.Close)
	return h
}

// await returns once n more checks were answered with code.
func (h *healthServer) await(t *testing.T, code, n int) {
	t.Helper()
	deadline := time.After(wait)
	for n > 0 {
		select {
		case got := <-h.hits:
			if got == code {
				n--
			}
		case <-deadline:
			t.Fatalf("health endpoint not checked (want %d more answers %d)", n, code)
		}
	}
}

// heartbeats collects the decoded heartbeats of one instance.
type heartbeats struct {
	nc   *nats.Conn
	ch   chan *nats.Msg
	seen *heartbeat.Message // the last one taken from ch
}

func listen(t *testing.T, url, id string, opts ...nats.Option) *heartbeats {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	h := &heartbeats{nc: nc, ch: make(chan *nats.Msg, 4096)}
	if _, err := nc.ChanSubscribe(heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, id), h.ch); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return h
}

// next returns the next heartbeat for which ok holds, skipping others.
func (h *heartbeats) next(t *testing.T, what string, ok func(*heartbeat.Message) bool) *heartbeat.Message {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case msg := <-h.ch:
			m := h.decode(t, msg)
			if ok(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no heartbeat: %s", what)
		}
	}
}

func (h *heartbeats) decode(t *testing.T, msg *nats.Msg) *heartbeat.Message {
	t.Helper()
	m, err := heartbeat.Decode(heartbeat.DefaultPrefix, msg.Subject, msg.Data)
	if err != nil {
		t.Fatalf("invalid heartbeat %s: %v", msg.Data, err)
	}
	h.seen = m
	return m
}

// last takes every heartbeat the server delivered before now and returns
// the last one: after a flush (a ping the server answers after what it
// sent before), they are all in ch. Called once the gateway saw the
// instance go stale, it returns the last heartbeat before the pause.
func (h *heartbeats) last(t *testing.T) *heartbeat.Message {
	t.Helper()
	if err := h.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case msg := <-h.ch:
			h.decode(t, msg)
		default:
			if h.seen == nil {
				t.Fatal("no heartbeat yet")
			}
			return h.seen
		}
	}
}

func anyBeat(*heartbeat.Message) bool { return true }

// running is one Run in the background.
type running struct {
	sig  chan os.Signal
	done chan error
}

func run(t *testing.T, c *Config) *running {
	t.Helper()
	r := &running{sig: make(chan os.Signal, 1), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	log := zaptest.NewLogger(t, zaptest.Level(zapcore.DebugLevel))
	go func() { r.done <- Run(ctx, c, r.sig, log) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// stop sends sig and waits for Run to return.
func (r *running) stop(t *testing.T, sig os.Signal) {
	t.Helper()
	r.sig <- sig
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run returned %v after %v", err, sig)
		}
		r.done <- nil // for the cleanup
	case <-time.After(wait):
		t.Fatalf("Run did not return after %v", sig)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
