package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Instance is one demo application instance: an HTTP server on a free
// loopback port that announces itself with a heartbeat.Publisher. Each
// Start is a new process (new port, new started_at); Kill, Hang and Leave
// end it in the three ways an instance can go away.
type Instance struct {
	ID       string
	Priority int
	// Version is the version the next Start announces and serves (in the
	// X-Version header); SetVersion changes it between processes.
	Version string

	natsURL  string
	prefix   string
	interval time.Duration

	mu  sync.Mutex
	cur *process
}

// process is one life of an instance.
type process struct {
	id      string
	version string
	url     string
	started time.Time
	srv     *http.Server
	nc      *nats.Conn
	pub     *heartbeat.Publisher
	hung    atomic.Bool
	serving atomic.Int64  // requests in progress, WebSockets aside
	release chan struct{} // closed when the process ends; frees hung requests
	ended   sync.Once
}

// Start starts a new process of the instance and announces it once it
// accepts connections.
func (in *Instance) Start() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cur != nil {
		return fmt.Errorf("demo: %s is already running", in.ID)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: %s: %w", in.ID, err)
	}
	p := &process{id: in.ID, version: in.Version, url: "http://" + ln.Addr().String(), release: make(chan struct{})}
	if err := p.publisher(in); err != nil {
		ln.Close()
		return err
	}
	p.srv = &http.Server{Handler: p.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	// The listener accepts connections already: announce.
	if err := p.pub.Start(); err != nil {
		p.end()
		return fmt.Errorf("demo: %s: %w", in.ID, err)
	}
	in.cur = p
	return nil
}

// publisher connects to NATS and prepares (does not start) the publisher.
func (p *process) publisher(in *Instance) error {
	nc, err := heartbeat.Connect(in.natsURL, nats.Name("caddy-cx demo "+in.ID))
	if err != nil {
		return fmt.Errorf("demo: %s: connecting to NATS: %w", in.ID, err)
	}
	pub, err := heartbeat.NewPublisher(nc, heartbeat.Config{
		Prefix: in.prefix, ID: in.ID, URL: p.url, Interval: in.interval,
		Version: p.version, Priority: in.Priority, Meta: map[string]string{"demo": "true"},
	})
	if err != nil {
		nc.Close()
		return fmt.Errorf("demo: %s: %w", in.ID, err)
	}
	p.nc, p.pub, p.started = nc, pub, pub.StartedAt()
	return nil
}

// take returns the running process and forgets it.
func (in *Instance) take() (*process, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	p := in.cur
	in.cur = nil
	if p == nil {
		return nil, fmt.Errorf("demo: %s is not running", in.ID)
	}
	return p, nil
}

// SetVersion sets the version the next Start runs, as a deploy does.
func (in *Instance) SetVersion(v string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.Version = v
}

// StartedAt is the started_at of the running process (zero if none).
func (in *Instance) StartedAt() time.Time {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cur == nil {
		return time.Time{}
	}
	return in.cur.started
}

// Kill ends the process as a crash does: heartbeats stop and every
// connection is cut, without a word to the gateway.
func (in *Instance) Kill() error {
	p, err := in.take()
	if err != nil {
		return err
	}
	p.pub.Stop()
	p.end()
	return nil
}

// Hang makes the process stop answering and stop heartbeating while it
// keeps its connections open, as a deadlocked process does. Its requests
// wait until the gateway gives up on them; Kill ends it.
func (in *Instance) Hang() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cur == nil {
		return fmt.Errorf("demo: %s is not running", in.ID)
	}
	in.cur.hung.Store(true)
	in.cur.pub.Stop()
	return nil
}

// leaveGrace is how long a leaving process keeps connections without a
// request in progress open after announcing it leaves, for requests the
// gateway sent before it heard.
const leaveGrace = 100 * time.Millisecond

// Leave ends the process gracefully: it announces leaving, then finishes
// the requests it has before closing. It does not wait for connections
// that never carried a request (a client's transport dials spares), which
// http.Server.Shutdown waits up to 5s for: that would only slow the drill.
func (in *Instance) Leave(ctx context.Context) error {
	p, err := in.take()
	if err != nil {
		return err
	}
	leaveErr := p.pub.Leave()
	announced := time.Now()
	shut := make(chan error, 1)
	go func() { shut <- p.srv.Shutdown(ctx) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var shutErr error
	for done := false; !done; {
		select {
		case shutErr = <-shut:
			done = true
		case <-tick.C:
			done = time.Since(announced) >= leaveGrace && p.serving.Load() == 0
		}
	}
	p.end()
	return errors.Join(leaveErr, shutErr)
}

// end closes whatever is left of the process.
func (p *process) end() {
	p.ended.Do(func() {
		close(p.release)
		_ = p.srv.Close()
		p.nc.Close()
	})
}
