// Package natstest starts real NATS servers inside tests, on loopback.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Wait bounds how long a test waits for a server to accept connections.
const Wait = 5 * time.Second

// Start runs a NATS server with opts (nil for defaults) on 127.0.0.1 and
// shuts it down when the test ends. A zero opts.Port picks a free port
// (nats-server itself would take 4222); the monitoring port stays off
// unless set.
func Start(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	if opts == nil {
		opts = &server.Options{}
	}
	if opts.Port == 0 {
		opts.Port = -1
	}
	opts.Host, opts.NoSigs, opts.NoLog = "127.0.0.1", true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(Wait) {
		s.Shutdown()
		t.Fatalf("NATS server on 127.0.0.1:%d not ready", opts.Port)
	}
	t.Cleanup(s.Shutdown)
	return s
}
