package deploy

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// TestForgedHeartbeatsNeverReachTheGateway replays the takeover and
// eviction attacks with the real parts: a gateway's registry and watcher
// connected as the gateway user, the real publishers of app1 and app2
// each as its own user, and an attacker holding app1's credentials who
// announces app2 at its own url with priority -1000, a new id app3, and
// then app2 leaving. With either form of the permissions nothing of it
// reaches the gateway: app2 keeps its url, priority and process, app3
// never joins, and the attacker's connection gets permissions violations.
func TestForgedHeartbeatsNeverReachTheGateway(t *testing.T) {
	forms := map[string]func(t *testing.T) (*server.Server, func(role, name string) nats.Option){
		"static permissions.conf": func(t *testing.T) (*server.Server, func(role, name string) nats.Option) {
			setStaticPasswords(t)
			s := startConfigured(t, "nats/permissions.conf")
			return s, func(_, name string) nats.Option { return nats.UserInfo(name, name+"-pw") }
		},
		"JWT scoped signing key": func(t *testing.T) (*server.Server, func(role, name string) nats.Option) {
			o := newOperatorSetup(t)
			return o.start(t), func(role, name string) nats.Option { return o.user(t, role, name) }
		},
	}
	for form, start := range forms {
		t.Run(form, func(t *testing.T) {
			s, as := start(t)
			gw := newGatewayView(t, connect(t, s, "gateway", as("gateway", "gateway")).Conn)

			app1 := startPublisher(t, connect(t, s, "app1", as("instance", "app1")).Conn, "app1", "http://127.0.0.1:9001", 0)
			app2 := startPublisher(t, connect(t, s, "app2", as("instance", "app2")).Conn, "app2", "http://127.0.0.1:9002", 1)
			gw.await(t, func(m map[string]membership.Member) bool {
				return m["app1"].State == membership.StateActive && m["app2"].State == membership.StateActive
			}, "app1 and app2 active")

			thief := connect(t, s, "app1 (stolen)", as("instance", "app1"))
			takeover := startPublisher(t, thief.Conn, "app2", "http://127.0.0.1:6666", -1000)
			newID := startPublisher(t, thief.Conn, "app3", "http://127.0.0.1:6666", -1000)
			for deadline := time.Now().Add(wait); takeover.Seq() < 5 || newID.Seq() < 5; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the forgers published %d and %d heartbeats", takeover.Seq(), newID.Seq())
				}
			}
			if err := takeover.Leave(); err != nil {
				t.Fatal(err)
			}
			newID.Stop()
			if err := thief.Flush(); err != nil {
				t.Fatal(err)
			}
			thief.violation(t, "instance app1 publishing", "cx.ha.hb.app2")

			// Everything the thief sent was handled by the server before
			// app2's next heartbeat; once the gateway has that one, it has
			// seen all it will ever see of the forgeries.
			after := app2.Seq()
			gw.await(t, func(m map[string]membership.Member) bool { return m["app2"].Seq > after }, "app2's next heartbeat")

			members := gw.members()
			if m := members["app2"]; m.URL != "http://127.0.0.1:9002" || m.State != membership.StateActive ||
				m.Priority != 1 || !m.StartedAt.Equal(app2.StartedAt()) {
				t.Errorf("app2 after the forgeries: url %s state %s priority %d started_at %v; want its own process", m.URL, m.State, m.Priority, m.StartedAt)
			}
			if m := members["app1"]; m.URL != "http://127.0.0.1:9001" || !m.StartedAt.Equal(app1.StartedAt()) {
				t.Errorf("app1 after the forgeries: %+v", m)
			}
			if _, ok := members["app3"]; ok {
				t.Error("app3, announced with app1's credentials, joined")
			}
			for _, ev := range gw.seen() {
				if ev.URL == "http://127.0.0.1:6666" || ev.ID == "app3" || ev.Kind == membership.EventLeave ||
					ev.Kind == membership.EventConflict || ev.Kind == membership.EventRestart || ev.Kind == membership.EventRejected {
					t.Errorf("the gateway saw a forgery: %+v", ev)
				}
			}
		})
	}
}

// gatewayView is a gateway's membership: a real registry fed by a real
// watcher, and every event it raised.
type gatewayView struct {
	reg    *membership.Registry
	mu     sync.Mutex
	events []membership.Event
}

func newGatewayView(t *testing.T, nc *nats.Conn) *gatewayView {
	t.Helper()
	g := &gatewayView{}
	reg, err := membership.New(membership.Config{OnEvent: func(ev membership.Event) {
		g.mu.Lock()
		g.events = append(g.events, ev)
		g.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	g.reg = reg
	w := membership.NewWatcher(nc, reg)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *gatewayView) members() map[string]membership.Member {
	m := map[string]membership.Member{}
	for _, mem := range g.reg.Members() {
		m[mem.ID] = mem
	}
	return m
}

func (g *gatewayView) seen() []membership.Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]membership.Event(nil), g.events...)
}

// await polls the members until cond holds.
func (g *gatewayView) await(t *testing.T, cond func(map[string]membership.Member) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond(g.members()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; members %+v", what, g.members())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startPublisher runs the real heartbeat publisher (what the announce
// sidecar runs) for id on nc, every 100ms.
func startPublisher(t *testing.T, nc *nats.Conn, id, url string, priority int) *heartbeat.Publisher {
	t.Helper()
	p, err := heartbeat.NewPublisher(nc, heartbeat.Config{ID: id, URL: url, Priority: priority, Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}
