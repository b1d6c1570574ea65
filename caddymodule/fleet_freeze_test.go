package caddymodule

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
	"github.com/caddy-cx/caddy-cx/membership"
)

// TestFleetFrozenWhileDisconnected: a gateway cut off from NATS keeps its
// peers as they were (their silence proves nothing) and hears them again
// after the reconnect.
func TestFleetFrozenWhileDisconnected(t *testing.T) {
	port := freePort(t)
	ns := natstest.Start(t, &server.Options{Port: port})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	gw := func(id string) *Service {
		nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		s, err := newService(nil, &claim{owner: &App{GatewayID: id},
			settings: serviceSettings{membership: membership.Config{Prefix: heartbeat.DefaultPrefix}}, logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.start(nc); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Destruct() })
		return s
	}
	a, b := gw("gw-a"), gw("gw-b")
	knowEachOther(t, a, b)
	activeAt := func(at time.Time) bool {
		for _, g := range a.gatewayStatus(at) {
			if g.ID == "gw-b" {
				return g.State == membership.StateActiveName
			}
		}
		return false
	}
	if activeAt(time.Now().Add(time.Minute)) {
		t.Fatal("connected: a peer unheard for a minute is still active")
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	eventually(t, 5*time.Second, func() bool { return activeAt(time.Now().Add(time.Minute)) }, "gw-b kept active while gw-a is cut off")

	natstest.Start(t, &server.Options{Port: port})
	eventually(t, 10*time.Second, func() bool { return !activeAt(time.Now().Add(time.Minute)) && activeAt(time.Now()) },
		"staleness judged again after the reconnect, gw-b heard")
}
