package announce

import (
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// natsOptions are the connection options of the auth and TLS settings,
// the same choices as the gateway's `cx` app.
func (a *Auth) natsOptions() ([]nats.Option, error) {
	return heartbeat.Auth(*a).Options()
}
