package membership

import (
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// publish sends m on its heartbeat subject and waits until the server has it.
func publish(t *testing.T, nc *nats.Conn, prefix string, m *heartbeat.Message) {
	t.Helper()
	b, err := heartbeat.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(heartbeat.HeartbeatSubject(prefix, m.ID), b); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// discoverSpy counts discover messages on prefix, subscribed before it
// returns.
func discoverSpy(t *testing.T, nc *nats.Conn, prefix string) <-chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 64)
	if _, err := nc.ChanSubscribe(heartbeat.DiscoverSubject(prefix), ch); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func waitDiscover(t *testing.T, ch <-chan *nats.Msg, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no discover %s", what)
	}
}

func startWatcher(t *testing.T, nc *nats.Conn, reg *Registry) *Watcher {
	t.Helper()
	w := NewWatcher(nc, reg)
	w.OnError = func(err error) { t.Errorf("watcher: %v", err) }
	if err := w.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(w.Stop)
	return w
}

func routed(r *Registry, id string) bool { return slices.Contains(routedIDs(r.Snapshot()), id) }

func TestWatcherDeliversHeartbeats(t *testing.T) {
	ns := startNATS(t)
	reg, rec := newReg(t, Config{Prefix: "shop.prod"})
	wc := connect(t, ns.url())
	startWatcher(t, wc, reg)
	if err := wc.Flush(); err != nil { // the subscription is in place
		t.Fatal(err)
	}
	pub := connect(t, ns.url())

	publish(t, pub, "shop.prod", beat("app1", 1, withURL("http://10.0.0.1:8080")))
	publish(t, pub, "shop.prod", beat("app2", 1, withURL("http://10.0.0.2:8080"), withPriority(1)))
	publish(t, pub, "cx.ha", beat("other", 1)) // another prefix: not ours
	eventually(t, "app1 and app2 routed", func() bool {
		s := r2s(reg)
		return slices.Equal(s, []string{"app1", "app2"})
	})

	// Garbage is rejected and changes nothing.
	if err := pub.Publish("shop.prod.hb.app1", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	_ = pub.Flush()
	eventually(t, "the rejection", func() bool {
		for _, ev := range rec.take() {
			if ev.Kind == EventRejected && ev.Reason == "json" && ev.ID == "app1" {
				return true
			}
		}
		return false
	})
	if !routed(reg, "app1") {
		t.Fatal("garbage changed routing")
	}

	publish(t, pub, "shop.prod", beat("app1", 2, withURL("http://10.0.0.1:8080"), leaving()))
	eventually(t, "app1 out of routing", func() bool { return !routed(reg, "app1") })
	mustState(t, reg, "app1", StateLeft)
	if _, ok := member(t, reg, "other"); ok {
		t.Fatal("heartbeat of another prefix was taken")
	}
}

func r2s(r *Registry) []string { return routedIDs(r.Snapshot()) }

func TestWatcherDiscoverAndReconnect(t *testing.T) {
	const staleAfter = time.Second
	ns := startNATS(t)
	obs := connect(t, ns.url())
	discover := discoverSpy(t, obs, heartbeat.DefaultPrefix)

	reg, rec := newReg(t, Config{StaleAfter: staleAfter})
	g := &gate{}
	wc := connect(t, ns.url(), nats.SetCustomDialer(g))
	startWatcher(t, wc, reg)
	waitDiscover(t, discover, "on Start")
	if reg.Frozen() {
		t.Fatal("frozen while connected")
	}

	pub := connect(t, ns.url())
	publish(t, pub, heartbeat.DefaultPrefix, beat("app1", 1))
	publish(t, pub, heartbeat.DefaultPrefix, beat("app2", 1, draining()))
	eventually(t, "app1 routed and app2 known", func() bool {
		_, ok := member(t, reg, "app2")
		return routed(reg, "app1") && ok
	})
	before, _ := member(t, reg, "app1")

	// The server goes away; the watcher's client may not come back until
	// the test opens the gate.
	g.closed.Store(true)
	ns.stop()
	eventually(t, "the registry to freeze", reg.Frozen)
	rec.take()

	// Real time passes beyond stale_after with the watcher's sweeper
	// running, and explicit sweeps look far ahead: nobody turns stale.
	down := time.Now()
	for time.Since(down) < staleAfter*3/2 {
		if !reg.Frozen() {
			t.Fatal("thawed while disconnected")
		}
		mustState(t, reg, "app1", StateActive)
		mustState(t, reg, "app2", StateDraining)
		time.Sleep(20 * time.Millisecond)
	}
	for k := time.Duration(1); k <= 100; k++ {
		reg.Sweep(time.Now().Add(k * staleAfter))
	}
	mustState(t, reg, "app1", StateActive)
	mustState(t, reg, "app2", StateDraining)
	if !routed(reg, "app1") {
		t.Fatal("app1 out of routing while disconnected")
	}
	for _, ev := range rec.take() {
		t.Errorf("event while disconnected: %+v", ev)
	}

	// The server comes back on the same port. The spy reconnects first
	// (no gate), then the watcher is let in.
	ns.restart()
	eventually(t, "the spy to reconnect", obs.IsConnected)
	if err := obs.Flush(); err != nil { // its subscription is back in place
		t.Fatal(err)
	}
	for len(discover) > 0 {
		<-discover
	}
	g.closed.Store(false)
	waitDiscover(t, discover, "after reconnect")
	eventually(t, "the registry to thaw", func() bool { return !reg.Frozen() })

	// Members are kept, and judged from the reconnect, not from their last
	// heartbeat (which is older than stale_after by now).
	reg.Sweep(time.Now())
	after, ok := member(t, reg, "app1")
	if !ok || after.State != StateActive || !routed(reg, "app1") {
		t.Fatalf("app1 after reconnect: %+v (member %v)", after, ok)
	}
	if !after.LastSeen.Equal(before.LastSeen) {
		t.Errorf("LastSeen moved from %v to %v without a heartbeat", before.LastSeen, after.LastSeen)
	}
	mustState(t, reg, "app2", StateDraining)

	// The subscription is back too.
	eventually(t, "the publisher to reconnect", pub.IsConnected)
	publish(t, pub, heartbeat.DefaultPrefix, beat("app1", 2, withVersion("v2")))
	eventually(t, "a heartbeat after reconnect", func() bool {
		m, _ := member(t, reg, "app1")
		return m.Seq == 2 && m.Version == "v2"
	})

	// And silence is judged again once connected.
	eventually(t, "app2 to turn stale", func() bool {
		m, _ := member(t, reg, "app2")
		return m.State == StateStale
	})
}

func TestWatcherStartBeforeConnected(t *testing.T) {
	ns := startNATS(t)
	obs := connect(t, ns.url())
	discover := discoverSpy(t, obs, heartbeat.DefaultPrefix)

	reg, _ := newReg(t, Config{StaleAfter: 300 * time.Millisecond})
	reg.Apply(beat("app1", 1), time.Now()) // e.g. known from before
	g := &gate{}
	g.closed.Store(true)
	wc := connect(t, ns.url(), nats.SetCustomDialer(g), nats.RetryOnFailedConnect(true))
	if wc.IsConnected() {
		t.Fatal("connected through a closed gate")
	}
	startWatcher(t, wc, reg)
	if !reg.Frozen() {
		t.Fatal("not frozen after Start on a disconnected connection")
	}
	reg.Sweep(time.Now().Add(time.Hour))
	mustState(t, reg, "app1", StateActive)

	g.closed.Store(false)
	waitDiscover(t, discover, "once connected")
	eventually(t, "the registry to thaw", func() bool { return !reg.Frozen() })
	mustState(t, reg, "app1", StateActive)

	pub := connect(t, ns.url())
	publish(t, pub, heartbeat.DefaultPrefix, beat("app2", 1))
	eventually(t, "app2 routed", func() bool { return routed(reg, "app2") })
}

func TestWatcherStartStop(t *testing.T) {
	ns := startNATS(t)
	obs := connect(t, ns.url())
	discover := discoverSpy(t, obs, heartbeat.DefaultPrefix)
	reg, _ := newReg(t, Config{})
	wc := connect(t, ns.url())
	w := startWatcher(t, wc, reg)
	waitDiscover(t, discover, "on Start")
	if err := w.Start(); err != nil { // a no-op
		t.Fatal(err)
	}
	w.Stop()
	w.Stop()
	if wc.NumSubscriptions() != 0 {
		t.Fatalf("%d subscriptions after Stop", wc.NumSubscriptions())
	}

	// A registry frozen by an earlier watcher is thawed by a new one on a
	// connected connection.
	reg.Freeze()
	w2 := startWatcher(t, wc, reg)
	waitDiscover(t, discover, "on the second Start")
	if reg.Frozen() {
		t.Fatal("still frozen after Start on a connected connection")
	}
	pub := connect(t, ns.url())
	publish(t, pub, heartbeat.DefaultPrefix, beat("app1", 1))
	eventually(t, "app1 routed", func() bool { return routed(reg, "app1") })
	w2.Stop()
}
