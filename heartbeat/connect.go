package heartbeat

import (
	"time"

	"github.com/nats-io/nats.go"
)

// DefaultConnName is the NATS connection name Connect sets unless the
// caller's options set another.
const DefaultConnName = "caddy-cx-instance"

// Connect connects to NATS (urls is a comma-separated list) with defaults
// suited to an instance that publishes heartbeats: no reconnect buffer (a
// heartbeat is never replayed), reconnecting forever every 250ms plus
// jitter, retrying a failed first connect in the background, and the name
// DefaultConnName. opts are applied after these and override them.
//
// Because the first connect is retried, Connect returns without error
// while the servers are still unreachable; the connection then reports
// itself not connected until it gets through.
func Connect(urls string, opts ...nats.Option) (*nats.Conn, error) {
	defaults := []nats.Option{
		nats.Name(DefaultConnName),
		nats.ReconnectBufSize(-1),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
	}
	return nats.Connect(urls, append(defaults, opts...)...)
}
