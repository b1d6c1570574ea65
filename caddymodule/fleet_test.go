package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// fleetGateway is a started service of the default prefix, as the
// gateway id names it, on its own connection to natsURL: one gateway of
// a fleet, in this process.
func fleetGateway(t testing.TB, natsURL, id string, edit func(*serviceSettings)) *Service {
	t.Helper()
	set := serviceSettings{membership: membership.Config{Prefix: heartbeat.DefaultPrefix, StaleAfter: time.Second},
		failTimeout: time.Minute}
	if edit != nil {
		edit(&set)
	}
	c := &claim{owner: &App{GatewayID: id}, settings: set, logger: zap.NewNop()}
	s, err := newService(nil, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.start(connect(t, natsURL)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destruct() })
	return s
}

// beatingPair starts backends app1 (priority 0, the primary) and app2
// (priority 1) and their heartbeats on nc, until the test ends; it
// returns app1.
func beatingPair(t testing.TB, nc *nats.Conn) *backend {
	t.Helper()
	app1, app2 := startBackend(t, "app1"), startBackend(t, "app2")
	i1, i2 := newInstance(t, nc, "app1", app1.url, 0), newInstance(t, nc, "app2", app2.url, 1)
	stop1, stop2 := i1.keepBeating(), i2.keepBeating()
	t.Cleanup(stop1)
	t.Cleanup(stop2)
	return app1
}

// peerOf returns what s knows of gateway id.
func peerOf(s *Service, id string) (GatewayStatus, bool) {
	for _, g := range s.gatewayStatus(time.Now()) {
		if g.ID == id {
			return g, true
		}
	}
	return GatewayStatus{}, false
}

// knowEachOther waits until every gateway sees every other one active.
func knowEachOther(t testing.TB, gws ...*Service) {
	t.Helper()
	eventually(t, 5*time.Second, func() bool {
		for _, a := range gws {
			for _, b := range gws {
				if g, ok := peerOf(a, b.gatewayID()); !ok || g.State != "active" {
					return false
				}
			}
		}
		return true
	}, "the gateways announced to each other")
}

// routed waits until every gateway routes to the instances of ids.
func routed(t testing.TB, ids []string, gws ...*Service) {
	t.Helper()
	eventually(t, 5*time.Second, func() bool {
		for _, s := range gws {
			have := map[string]bool{}
			for _, r := range s.reg.Snapshot().Routes {
				have[r.ID] = true
			}
			for _, id := range ids {
				if !have[id] {
					return false
				}
			}
		}
		return true
	}, fmt.Sprintf("%v routed by every gateway", ids))
}

func TestFleetHeartbeatsAnnounceEachGateway(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	var mu sync.Mutex
	var beats []*heartbeat.GatewayMessage
	sub, err := nc.Subscribe(heartbeat.GatewaySubject(heartbeat.DefaultPrefix, "gw-a"), func(msg *nats.Msg) {
		m, err := heartbeat.DecodeGateway(heartbeat.DefaultPrefix, msg.Subject, msg.Data)
		if err != nil {
			t.Errorf("gateway heartbeat does not decode: %v\n%s", err, msg.Data)
			return
		}
		mu.Lock()
		beats = append(beats, m)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = nc.Flush()

	app := startBackend(t, "app1")
	i := newInstance(t, nc, "app1", app.url, 0)
	stop := i.keepBeating()
	defer stop()
	a := fleetGateway(t, natsURL, "gw-a", nil)
	b := fleetGateway(t, natsURL, "gw-b", nil)
	knowEachOther(t, a, b)
	routed(t, []string{"app1"}, a, b)

	eventually(t, 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(beats) >= 3 && slices.Equal(beats[len(beats)-1].Primary, []string{"app1"})
	}, "three heartbeats of gw-a, the last naming app1 primary")
	mu.Lock()
	for n, m := range beats {
		if m.State != "active" || m.Version != "dev" || m.NATSServer == "" || m.IntervalMS != 1000 {
			t.Errorf("heartbeat %d: %+v", n, m)
		}
		if n > 0 && (m.Seq <= beats[n-1].Seq || !m.StartedAt.Equal(beats[0].StartedAt)) {
			t.Errorf("heartbeat %d: seq %d after %d, started_at %v after %v", n, m.Seq, beats[n-1].Seq, m.StartedAt, beats[0].StartedAt)
		}
	}
	mu.Unlock()

	got, _ := peerOf(b, "gw-a")
	if got.Self || got.Version != "dev" || !slices.Equal(got.Primary, []string{"app1"}) || !got.NATSConnected || got.StaleAfterSeconds != 3 {
		t.Errorf("gw-b's view of gw-a: %+v", got)
	}
	if self, _ := peerOf(b, "gw-b"); !self.Self || !self.NATSConnected || self.NATSServer == "" {
		t.Errorf("gw-b's view of itself: %+v", self)
	}
	if n := b.stats.fleetMessage(fleetHeartbeat, fleetAccepted).Load(); n < 2 {
		t.Errorf("gw-b accepted %d heartbeats", n)
	}

	// leaving: the peer shows it left at once
	_ = a.Destruct()
	eventually(t, 2*time.Second, func() bool {
		g, ok := peerOf(b, "gw-a")
		return ok && g.State == "left"
	}, "gw-a shown left by gw-b")
}

// TestFleetSelfBeforeItsHeartbeat: a gateway lists itself from its own
// state, before (or without) hearing its heartbeat back.
func TestFleetSelfBeforeItsHeartbeat(t *testing.T) {
	natsURL := startNATS(t)
	s := fleetGateway(t, natsURL, "lonely", nil)
	gws := s.gatewayStatus(time.Now())
	if len(gws) != 1 || !gws[0].Self || gws[0].ID != "lonely" || gws[0].State != "active" || gws[0].Primary == nil {
		t.Fatalf("gateways right after start: %+v", gws)
	}
}

// TestFleetSharesFailures: a failure counted on gateway A passes the
// instance over on gateway B too, within 100 ms.
func TestFleetSharesFailures(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	beatingPair(t, nc)
	a := fleetGateway(t, natsURL, "gw-a", nil)
	b := fleetGateway(t, natsURL, "gw-b", nil)
	knowEachOther(t, a, b)
	routed(t, []string{"app1", "app2"}, a, b)
	dial := memberDial(t, b, "app1")

	var worst time.Duration
	for round := range 5 {
		start := time.Now()
		a.health.fail(dial, start) // as the request path counts it
		pollFor(t, 2*time.Second, func() bool { return b.health.failing(dial, time.Now()) }, "app1 failing on gw-b")
		took := time.Since(start)
		worst = max(worst, took)
		t.Logf("round %d: failure on gw-a marked app1 failing on gw-b after %v", round, took)
		if !slices.Equal(b.primaryIDs(time.Now()), []string{"app2"}) {
			t.Fatalf("gw-b's primary %v, want app2", b.primaryIDs(time.Now()))
		}
		a.health.clear(dial)
		b.health.clear(dial)
		// the next round starts a new window
		time.Sleep(observationWindow)
	}
	t.Logf("failure shared across gateways: worst of 5 %v", worst)
	if worst > 100*time.Millisecond {
		t.Errorf("a failure took %v to reach the other gateway, want ≤ 100ms", worst)
	}
	if n := b.stats.fleet.applied.Load(); n < 5 {
		t.Errorf("observations applied on gw-b: %d", n)
	}
	// an applied observation is not published again
	if a.health.failing(dial, time.Now()) {
		t.Errorf("gw-b shared back a failure it only applied")
	}
}

// memberDial returns the dial address s routes id at.
func memberDial(t testing.TB, s *Service, id string) string {
	t.Helper()
	m, ok := s.reg.Member(id)
	if !ok {
		t.Fatalf("no member %s", id)
	}
	return m.Dial
}

// TestFleetShareFailuresOff: with share_failures off on either side, a
// failure stays with the gateway that saw it.
func TestFleetShareFailuresOff(t *testing.T) {
	for _, off := range []string{"publisher", "receiver"} {
		t.Run("off on the "+off, func(t *testing.T) {
			natsURL := startNATS(t)
			nc := connect(t, natsURL)
			app1 := startBackend(t, "app1")
			i1 := newInstance(t, nc, "app1", app1.url, 0)
			stop := i1.keepBeating()
			defer stop()
			offA := func(set *serviceSettings) { set.shareFailuresOff = off == "publisher" }
			offB := func(set *serviceSettings) { set.shareFailuresOff = off == "receiver" }
			a := fleetGateway(t, natsURL, "gw-a", offA)
			b := fleetGateway(t, natsURL, "gw-b", offB)
			knowEachOther(t, a, b)
			routed(t, []string{"app1"}, a, b)
			published := make(chan struct{}, 16)
			sub, _ := nc.Subscribe(heartbeat.ObservationWildcard(heartbeat.DefaultPrefix), func(*nats.Msg) { published <- struct{}{} })
			defer sub.Unsubscribe()
			_ = nc.Flush()

			dial := memberDial(t, a, "app1")
			a.health.fail(dial, time.Now())
			if off == "publisher" {
				select {
				case <-published:
					t.Fatal("gw-a published an observation with share_failures off")
				case <-time.After(3 * observationWindow):
				}
			} else {
				select {
				case <-published:
				case <-time.After(2 * time.Second):
					t.Fatal("gw-a published no observation")
				}
				eventually(t, 2*time.Second, func() bool {
					return b.stats.fleetMessage(fleetObservation, fleetIgnored).Load() == 1
				}, "gw-b ignoring the observation")
			}
			if b.health.failing(dial, time.Now()) || b.stats.fleet.applied.Load() != 0 {
				t.Errorf("gw-b applied a failure with share_failures off on the %s", off)
			}
		})
	}
}

// observation publishes a raw observation on obs.<subjectID>.
func publishObservation(t testing.TB, nc *nats.Conn, subjectID string, o heartbeat.Observation) {
	t.Helper()
	o.Proto, o.Kind = heartbeat.Proto, heartbeat.KindObservation
	data, err := heartbeat.EncodeGateway(&o)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(heartbeat.ObservationSubject(heartbeat.DefaultPrefix, subjectID), data); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
}

// TestFleetRefusesSpoofedObservations: observations count only from a
// live, announced gateway process, and only for the process they name.
func TestFleetRefusesSpoofedObservations(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	app1 := startBackend(t, "app1")
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	stop := i1.keepBeating()
	defer stop()
	a := fleetGateway(t, natsURL, "gw-a", nil)
	b := fleetGateway(t, natsURL, "gw-b", nil)
	knowEachOther(t, a, b)
	routed(t, []string{"app1"}, b)
	dial := memberDial(t, b, "app1")
	real := heartbeat.ObservedFailure{ID: "app1", StartedAt: i1.msg.StartedAt}
	fa := a.fleetNow()

	ignored := func() uint64 { return b.stats.fleetMessage(fleetObservation, fleetIgnored).Load() }
	for n, tc := range []struct {
		name    string
		subject string
		o       heartbeat.Observation
	}{
		{"unannounced publisher", "evil", heartbeat.Observation{Gateway: "evil", StartedAt: time.Now().UTC(), Seq: 1, Failed: []heartbeat.ObservedFailure{real}}},
		{"spoofed started_at of a real gateway", "gw-a", heartbeat.Observation{Gateway: "gw-a", StartedAt: fa.startedAt.Add(-time.Second), Seq: 1, Failed: []heartbeat.ObservedFailure{real}}},
	} {
		publishObservation(t, nc, tc.subject, tc.o)
		eventually(t, 2*time.Second, func() bool { return ignored() == uint64(n+1) }, tc.name+" ignored and counted")
		if b.health.failing(dial, time.Now()) {
			t.Fatalf("%s: app1 marked failing", tc.name)
		}
	}
	// the gateway id in the payload must be the subject's
	publishObservation(t, nc, "evil", heartbeat.Observation{Gateway: "gw-a", StartedAt: fa.startedAt, Seq: 1, Failed: []heartbeat.ObservedFailure{real}})
	eventually(t, 2*time.Second, func() bool { return b.stats.fleetMessage(fleetObservation, fleetRejected).Load() == 1 }, "a spoofed gateway id rejected")
	// from the real gateway, but of an earlier process of the instance
	publishObservation(t, nc, "gw-a", heartbeat.Observation{Gateway: "gw-a", StartedAt: fa.startedAt, Seq: 100,
		Failed: []heartbeat.ObservedFailure{{ID: "app1", StartedAt: real.StartedAt.Add(-time.Hour)}}})
	eventually(t, 2*time.Second, func() bool { return b.stats.fleetMessage(fleetObservation, fleetAccepted).Load() == 1 }, "the old process's observation heard")
	if b.health.failing(dial, time.Now()) || b.stats.fleet.applied.Load() != 0 {
		t.Fatal("a failure of an earlier process of app1 marked the current one failing")
	}
	// the real one, as a check that the refusals above could have failed
	publishObservation(t, nc, "gw-a", heartbeat.Observation{Gateway: "gw-a", StartedAt: fa.startedAt, Seq: 101, Failed: []heartbeat.ObservedFailure{real}})
	eventually(t, 2*time.Second, func() bool { return b.health.failing(dial, time.Now()) }, "gw-a's real observation applied")
}

// TestFleetFloodIsBounded: garbage and made-up gateways on gw.* and
// obs.* are refused and counted at a bounded cost, while requests through
// the gateway go on being served by the healthy instance.
func TestFleetFloodIsBounded(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy\n}")
	nc := connect(t, natsURL)
	app1 := startBackend(t, "app1")
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	stop := i1.keepBeating()
	defer stop()
	b := serviceOf(t, heartbeat.DefaultPrefix)
	servedBy(t, base, "app1", 5*time.Second)
	dial := memberDial(t, b, "app1")
	counted := func() uint64 {
		var sum uint64
		for k := range fleetKindNames {
			for r := range fleetResultNames {
				sum += b.stats.fleet.messages[k][r].Load()
			}
		}
		return sum
	}
	var served, failed sync.Map
	var once sync.Once
	stopAll := getsInBackground(base, func(resp *http.Response, err error) {
		if err == nil && resp.StatusCode == 200 && resp.Header.Get("X-Instance") == "app1" {
			served.Store(time.Now().UnixNano(), true)
		} else {
			failed.Store(time.Now().UnixNano(), fmt.Sprint(resp, err))
		}
	})
	stopGets := func() { once.Do(stopAll) }
	defer stopGets()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	already := counted()

	const n = 10000
	now := time.Now().UTC()
	flood := connect(t, natsURL)
	for k := range n {
		var subject string
		var data []byte
		switch k % 4 {
		case 0:
			subject, data = heartbeat.GatewaySubject(heartbeat.DefaultPrefix, fmt.Sprintf("g%d", k)), []byte(`{"proto":1,"kind":"gateway","garbage`)
		case 1: // valid, each from a new gateway id: capacity bounds them
			m := heartbeat.GatewayMessage{Proto: heartbeat.Proto, Kind: heartbeat.KindGateway, ID: fmt.Sprintf("g%d", k),
				State: "active", StartedAt: now, Seq: 1, IntervalMS: 1000, Primary: []string{"x"}}
			data, _ = heartbeat.EncodeGateway(&m)
			subject = heartbeat.GatewaySubject(heartbeat.DefaultPrefix, m.ID)
		case 2:
			subject, data = heartbeat.ObservationSubject(heartbeat.DefaultPrefix, fmt.Sprintf("o%d", k)), []byte(`{"proto":1,"kind":"observation","gateway":"x"}`)
		case 3:
			o := heartbeat.Observation{Proto: heartbeat.Proto, Kind: heartbeat.KindObservation, Gateway: fmt.Sprintf("o%d", k),
				StartedAt: now, Seq: 1, Failed: []heartbeat.ObservedFailure{{ID: "app1", StartedAt: i1.msg.StartedAt}}}
			data, _ = heartbeat.EncodeGateway(&o)
			subject = heartbeat.ObservationSubject(heartbeat.DefaultPrefix, o.Gateway)
		}
		if err := flood.Publish(subject, data); err != nil {
			t.Fatal(err)
		}
	}
	_ = flood.Flush()
	eventually(t, 10*time.Second, func() bool { return counted()-already >= n }, fmt.Sprintf("%d flood messages counted", n))
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	stopGets()

	if got := len(b.fleetNow().fleet.Gateways(time.Now())); got > membership.DefaultMaxGateways {
		t.Errorf("the fleet holds %d gateways, more than %d", got, membership.DefaultMaxGateways)
	}
	if b.health.failing(dial, time.Now()) || b.stats.fleet.applied.Load() != 0 {
		t.Error("a flooded observation marked app1 failing")
	}
	nServed, nFailed := 0, 0
	served.Range(func(any, any) bool { nServed++; return true })
	failed.Range(func(_, v any) bool {
		if nFailed == 0 {
			t.Errorf("a request during the flood: %v", v)
		}
		nFailed++
		return true
	})
	if nServed == 0 || nFailed > 0 {
		t.Errorf("requests during the flood: %d served by app1, %d not", nServed, nFailed)
	}
	if growth > 16<<20 {
		t.Errorf("the heap grew by %d bytes over the flood", growth)
	}
	m := &b.stats.fleet.messages
	t.Logf("flood of %d: heartbeats accepted %d rejected %d ignored %d; observations accepted %d rejected %d ignored %d; gateways kept %d; heap growth %d KiB; %d requests served during it",
		n, m[0][0].Load(), m[0][1].Load(), m[0][2].Load(), m[1][0].Load(), m[1][1].Load(), m[1][2].Load(),
		len(b.fleetNow().fleet.Gateways(time.Now())), growth>>10, nServed)
}

// TestFleetGatewayIDChangedByReload: the service leaves the fleet under
// its old id and joins under the new one.
func TestFleetGatewayIDChangedByReload(t *testing.T) {
	natsURL := startNATS(t)
	a := fleetGateway(t, natsURL, "gw-a", nil)
	b := fleetGateway(t, natsURL, "gw-b", nil)
	knowEachOther(t, a, b)
	a.mu.Lock()
	renamed := *a.applied
	renamed.owner = &App{GatewayID: "gw-a2"}
	a.applied = &renamed
	a.mu.Unlock()
	eventually(t, 5*time.Second, func() bool {
		old, _ := peerOf(b, "gw-a")
		now, ok := peerOf(b, "gw-a2")
		return old.State == "left" && ok && now.State == "active"
	}, "gw-a left and gw-a2 active")
	if self, _ := peerOf(a, "gw-a2"); !self.Self {
		t.Errorf("gw-a2 does not know itself: %+v", a.gatewayStatus(time.Now()))
	}
}

// TestFleetPrimaryChangeAnnouncedAtOnce: a gateway whose primary changes
// publishes a heartbeat at once, not at the next period.
func TestFleetPrimaryChangeAnnouncedAtOnce(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	beatingPair(t, nc)
	a := fleetGateway(t, natsURL, "gw-a", nil)
	routed(t, []string{"app1", "app2"}, a)
	primaries := make(chan []string, 64)
	sub, err := nc.Subscribe(heartbeat.GatewaySubject(heartbeat.DefaultPrefix, "gw-a"), func(msg *nats.Msg) {
		if m, err := heartbeat.DecodeGateway(heartbeat.DefaultPrefix, msg.Subject, msg.Data); err == nil {
			primaries <- m.Primary
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = nc.Flush()
	// wait for a second heartbeat naming app1 (a periodic one, not the
	// one announcing app1's arrival), then change the primary
	for seen := 0; seen < 2; {
		if p := <-primaries; slices.Equal(p, []string{"app1"}) {
			seen++
		}
	}
	start := time.Now()
	a.health.fail(memberDial(t, a, "app1"), start)
	deadline := time.After(2 * time.Second)
	for {
		select {
		case p := <-primaries:
			if slices.Equal(p, []string{"app2"}) {
				took := time.Since(start)
				t.Logf("primary change announced after %v", took)
				if took > 100*time.Millisecond {
					t.Errorf("primary change announced after %v, want well under 1s", took)
				}
				return
			}
		case <-deadline:
			t.Fatal("no heartbeat naming app2 primary within 2s")
		}
	}
}

// TestFleetPeerPrimaryTriggersSweep: when a peer names another primary,
// the gateway judges staleness at once instead of at its next sweep.
func TestFleetPeerPrimaryTriggersSweep(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	// gw-b's registry is fed by hand and never swept by a watcher: only
	// the peer's heartbeat can make it judge staleness
	set := serviceSettings{membership: membership.Config{Prefix: heartbeat.DefaultPrefix, StaleAfter: 300 * time.Millisecond}, failTimeout: time.Minute}
	b, err := newService(nil, &claim{owner: &App{GatewayID: "gw-b"}, settings: set, logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	b.reg.SetControls(nil) // no control follower: nothing to await
	b.mu.Lock()
	b.startFleet(connect(t, natsURL))
	b.mu.Unlock()
	t.Cleanup(func() { b.stopFleet(); b.reg.Close() })
	a := fleetGateway(t, natsURL, "gw-a", func(set *serviceSettings) { set.membership.StaleAfter = 300 * time.Millisecond })
	knowEachOther(t, a, b)

	app1, app2 := startBackend(t, "app1"), startBackend(t, "app2")
	i1, i2 := newInstance(t, nc, "app1", app1.url, 0), newInstance(t, nc, "app2", app2.url, 1)
	// app2's heartbeats reach gw-b's registry, without a sweeper
	feed, err := nc.Subscribe(heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, "app2"), func(msg *nats.Msg) {
		_ = b.reg.Observe(msg.Subject, msg.Data, time.Now())
	})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Unsubscribe()
	_ = nc.Flush()
	stop2 := i2.keepBeating()
	defer stop2()
	i1.beat(heartbeat.StateReady) // and never again
	m := i1.msg
	b.reg.Apply(&m, time.Now())
	routed(t, []string{"app1", "app2"}, a, b)
	heard := b.stats.fleet.messages[fleetHeartbeat][fleetAccepted].Load()
	// gw-a sees app1 stale after 300ms and announces app2 at once; gw-b
	// then sweeps and agrees
	eventually(t, 3*time.Second, func() bool { return slices.Equal(a.primaryIDs(time.Now()), []string{"app2"}) }, "gw-a routing to app2")
	start := time.Now()
	eventually(t, 2*time.Second, func() bool { return slices.Equal(b.primaryIDs(time.Now()), []string{"app2"}) }, "gw-b routing to app2 after gw-a's heartbeat")
	t.Logf("gw-b followed gw-a's primary %v after gw-a changed it", time.Since(start))
	if m, _ := b.reg.Member("app1"); m.State != membership.StateStale {
		t.Errorf("app1 on gw-b: %s, want stale", m.State)
	}
	if b.stats.fleet.messages[fleetHeartbeat][fleetAccepted].Load() == heard {
		t.Error("no heartbeat of gw-a arrived")
	}
}

// TestGatewaysAdmin: GET /cx/gateways lists the fleet of each service.
func TestGatewaysAdmin(t *testing.T) {
	natsURL := startNATS(t)
	c := &claim{owner: &App{GatewayID: "gw-a"}, settings: serviceSettings{membership: membership.Config{Prefix: "fleet.admin"}}, logger: zap.NewNop()}
	link := &natsLink{}
	link.up.Store(true)
	a, err := acquireService(link, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.release(c) })
	if err := a.start(connect(t, natsURL)); err != nil {
		t.Fatal(err)
	}
	b := fleetGateway(t, natsURL, "gw-b", func(set *serviceSettings) { set.membership.Prefix = "fleet.admin" })
	knowEachOther(t, a, b)

	w := httptest.NewRecorder()
	if err := handleGateways(w, httptest.NewRequest("GET", "/cx/gateways", nil)); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Services []struct {
			SubjectPrefix string            `json:"subject_prefix"`
			Gateways      []json.RawMessage `json:"gateways"`
			SplitView     *bool             `json:"split_view"`
			Versions      []string          `json:"versions"`
			Warnings      []string          `json:"warnings"`
		} `json:"services"`
		GatewayID   string    `json:"gateway_id"`
		GeneratedAt time.Time `json:"generated_at"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
		t.Fatalf("%v\n%s", err, w.Body)
	}
	if w.Header().Get("Content-Type") != "application/json" || rep.GatewayID != "gw-a" || rep.GeneratedAt.IsZero() {
		t.Fatalf("report: %s", w.Body)
	}
	var svc = -1
	for i, s := range rep.Services {
		if s.SubjectPrefix == "fleet.admin" {
			svc = i
		}
	}
	if svc < 0 {
		t.Fatalf("no service fleet.admin in %s", w.Body)
	}
	s := rep.Services[svc]
	if len(s.Gateways) != 2 || s.SplitView == nil || *s.SplitView || !slices.Equal(s.Versions, []string{"dev"}) || s.Warnings == nil {
		t.Fatalf("service: %s", w.Body)
	}
	var gw map[string]any
	_ = json.Unmarshal(s.Gateways[0], &gw)
	for _, field := range []string{"id", "self", "state", "version", "started_at", "uptime_seconds", "heartbeat_age_seconds",
		"stale_after_seconds", "nats_server", "nats_connected", "primary", "inflight", "control"} {
		if _, ok := gw[field]; !ok {
			t.Errorf("gateway JSON lacks %q: %s", field, s.Gateways[0])
		}
	}
	if gw["id"] != "gw-a" || gw["self"] != true || gw["nats_connected"] != true {
		t.Errorf("self entry: %s", s.Gateways[0])
	}

	w = httptest.NewRecorder()
	err = handleGateways(w, httptest.NewRequest("POST", "/cx/gateways", nil))
	if err == nil || !strings.Contains(err.Error(), "GET") {
		t.Errorf("POST /cx/gateways: %v", err)
	}
}

// TestFleetSharesRequestPathFailures: a request that fails at an instance
// through one gateway (a real Caddy) takes the instance out of the
// primary on another gateway, and share_failures off in the Caddyfile
// keeps it to itself.
func TestFleetSharesRequestPathFailures(t *testing.T) {
	for _, share := range []string{"on", "off"} {
		t.Run("share_failures "+share, func(t *testing.T) {
			natsURL := startNATS(t)
			nc := connect(t, natsURL)
			port := freePort(t)
			loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t\tgateway_id gw-a\n\t}\n}\n"+
				"http://127.0.0.1:%d {\n\tcx_proxy {\n\t\tshare_failures %s\n\t\tfail_timeout 1m\n\t}\n}\n", natsURL, port, share))
			t.Cleanup(func() { _ = caddy.Stop() })
			base := fmt.Sprintf("http://127.0.0.1:%d", port)
			b := fleetGateway(t, natsURL, "gw-b", nil)
			a := serviceOf(t, heartbeat.DefaultPrefix)
			if a.gatewayID() != "gw-a" {
				t.Fatalf("gateway id %q", a.gatewayID())
			}
			app1 := beatingPair(t, nc)
			knowEachOther(t, a, b)
			routed(t, []string{"app1", "app2"}, a, b)
			servedBy(t, base, "app1", 5*time.Second)
			dial := memberDial(t, b, "app1")

			app1.failing.Store(true)
			start := time.Now()
			if got, code := get(t, "GET", base); got != "app2" || code != 200 {
				t.Fatalf("GET with app1 failing: %q %d, want app2 200", got, code)
			}
			if share == "off" {
				// gw-a heard: its heartbeat names app2 primary, while gw-b
				// still routes to app1
				eventually(t, 2*time.Second, func() bool {
					g, _ := peerOf(b, "gw-a")
					return slices.Equal(g.Primary, []string{"app2"})
				}, "gw-a announcing app2")
				if b.health.failing(dial, time.Now()) {
					t.Fatal("gw-b marked app1 failing with share_failures off on gw-a")
				}
				return
			}
			pollFor(t, 2*time.Second, func() bool { return b.health.failing(dial, time.Now()) }, "app1 failing on gw-b")
			took := time.Since(start)
			t.Logf("a failed request through gw-a marked app1 failing on gw-b %v after the request started", took)
			if took > 100*time.Millisecond {
				t.Errorf("took %v, want ≤ 100ms", took)
			}
			if got := b.primaryIDs(time.Now()); !slices.Equal(got, []string{"app2"}) {
				t.Errorf("gw-b's primary %v, want app2", got)
			}
		})
	}
}

// TestFleetWarnings: a split view longer than 2s names each gateway's
// primary; mixed versions and a gateway id claimed twice are warned of.
func TestFleetWarnings(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	app1 := startBackend(t, "app1")
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	stop := i1.keepBeating()
	defer stop()
	b := fleetGateway(t, natsURL, "gw-b", nil)
	routed(t, []string{"app1"}, b)

	peer := heartbeat.GatewayMessage{Proto: heartbeat.Proto, Kind: heartbeat.KindGateway, ID: "gw-x", State: "active",
		StartedAt: time.Now().UTC(), IntervalMS: 1000, Version: "9.9", Primary: []string{"other"}}
	var last time.Time
	beat := func() {
		if time.Since(last) < 100*time.Millisecond {
			return
		}
		last = time.Now()
		peer.Seq++
		data, _ := heartbeat.EncodeGateway(&peer)
		_ = nc.Publish(heartbeat.GatewaySubject(heartbeat.DefaultPrefix, peer.ID), data)
		_ = nc.Flush()
	}
	beat()
	since := time.Now()
	var warnings []string
	eventually(t, 5*time.Second, func() bool {
		beat()
		warnings = b.fleetWarnings(time.Now())
		return len(warnings) >= 2
	}, "a split view and mixed versions warned of")
	if took := time.Since(since); took < membership.SplitViewAfter {
		t.Errorf("split view warned of after %v, before %v", took, membership.SplitViewAfter)
	}
	text := strings.Join(warnings, "\n")
	for _, want := range []string{"split view", "gw-x → other", "gw-b → app1", "different versions: 9.9 (gw-x), dev (gw-b)"} {
		if !strings.Contains(text, want) {
			t.Errorf("warnings do not say %q:\n%s", want, text)
		}
	}
	if got := fleetGauge(t, b, descSplitView); got != 1 {
		t.Errorf("caddy_cx_fleet_split_view %v, want 1", got)
	}
	if got := fleetGauge(t, b, descGateways, "active"); got != 2 {
		t.Errorf(`caddy_cx_gateways{state="active"} %v, want 2`, got)
	}
	if st := b.fleetStatus(time.Now()); !st.SplitView || st.SplitSince.IsZero() || !slices.Equal(st.Versions, []string{"9.9", "dev"}) {
		t.Errorf("fleet status: %+v", st)
	}

	// another process claiming gw-b, started earlier than this one
	impostor := heartbeat.GatewayMessage{Proto: heartbeat.Proto, Kind: heartbeat.KindGateway, ID: "gw-b", State: "active",
		StartedAt: b.fleetNow().startedAt.Add(-time.Minute), Seq: 1, IntervalMS: 1000}
	data, _ := heartbeat.EncodeGateway(&impostor)
	_ = nc.Publish(heartbeat.GatewaySubject(heartbeat.DefaultPrefix, "gw-b"), data)
	_ = nc.Flush()
	eventually(t, 2*time.Second, func() bool {
		return strings.Contains(strings.Join(b.fleetWarnings(time.Now()), "\n"), "two gateway processes claim gateway_id gw-b")
	}, "the id conflict warned of")
	if self, _ := peerOf(b, "gw-b"); !self.Self || !self.StartedAt.Equal(b.fleetNow().startedAt) {
		t.Errorf("the impostor replaced this gateway's own entry: %+v", self)
	}
}

// fleetGauge is the value of the fleet metric desc of s whose last label
// is label (when given).
func fleetGauge(t testing.TB, s *Service, desc *prometheus.Desc, label ...string) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	collectFleet(ch, s, time.Now())
	close(ch)
	for m := range ch {
		if m.Desc() != desc {
			continue
		}
		var out dto.Metric
		if err := m.Write(&out); err != nil {
			t.Fatal(err)
		}
		pairs := out.GetLabel()
		if len(label) > 0 && pairs[len(pairs)-1].GetValue() != label[0] {
			continue
		}
		return out.GetGauge().GetValue()
	}
	t.Fatalf("no metric %v %v", desc, label)
	return 0
}

// TestFleetObservationsCoalesced: the first failure goes out at once,
// those after it at the end of the 100 ms window, at most 32 a message.
func TestFleetObservationsCoalesced(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	a := fleetGateway(t, natsURL, "gw-a", nil)
	var ids []string
	for k := range 40 {
		id := fmt.Sprintf("app%d", k)
		ids = append(ids, id)
		// never dialed: the failures are counted by hand
		i := newInstance(t, nc, id, fmt.Sprintf("http://127.0.0.1:%d", 20000+k), 0)
		i.msg.IntervalMS = 1000
		i.beat(heartbeat.StateReady)
	}
	routed(t, ids, a)
	type msg struct {
		at time.Time
		n  int
	}
	got := make(chan msg, 16)
	sub, err := nc.Subscribe(heartbeat.ObservationSubject(heartbeat.DefaultPrefix, "gw-a"), func(m *nats.Msg) {
		o, err := heartbeat.DecodeObservation(heartbeat.DefaultPrefix, m.Subject, m.Data)
		if err != nil {
			t.Errorf("observation does not decode: %v", err)
			return
		}
		got <- msg{time.Now(), len(o.Failed)}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_ = nc.Flush()

	start := time.Now()
	for _, id := range ids {
		a.health.fail(memberDial(t, a, id), time.Now())
	}
	var sizes []int
	var at []time.Duration
	for total := 0; total < len(ids); {
		select {
		case m := <-got:
			sizes = append(sizes, m.n)
			at = append(at, m.at.Sub(start))
			total += m.n
		case <-time.After(2 * time.Second):
			t.Fatalf("observations so far %v at %v", sizes, at)
		}
	}
	t.Logf("40 failures published as %v at %v", sizes, at)
	// how many the first takes depends on how many were queued when the
	// publisher woke
	if len(sizes) > 3 || slices.Max(sizes) > heartbeat.MaxObservedFailures {
		t.Errorf("observations of %v failures, want at most 3 of at most 32", sizes)
	}
	if at[0] > 50*time.Millisecond {
		t.Errorf("the first failure went out after %v, want at once", at[0])
	}
	for k := 1; k < len(at); k++ {
		if gap := at[k] - at[k-1]; gap < 90*time.Millisecond {
			t.Errorf("observations %d and %d only %v apart, want the 100ms window", k-1, k, gap)
		}
	}
}

// pollFor polls cond finely (a latency is measured) until it holds, and
// returns how long that took.
func pollFor(t testing.TB, within time.Duration, cond func() bool, what string) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return time.Since(start)
}

// TestShareFailuresOption: the Caddyfile option maps onto the JSON field
// and the service's settings, and two sites of one prefix must agree.
func TestShareFailuresOption(t *testing.T) {
	adapt := func(src string) (string, error) {
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
		return string(cfg), err
	}
	cfg, err := adapt(":8080 {\n\tcx_proxy {\n\t\tshare_failures off\n\t}\n}\n")
	if err != nil || !strings.Contains(cfg, `"share_failures":false`) {
		t.Fatalf("share_failures off adapts to %s (%v)", cfg, err)
	}
	cfg, err = adapt(":8080 {\n\treverse_proxy {\n\t\tdynamic cx {\n\t\t\tshare_failures on\n\t\t}\n\t}\n}\n")
	if err != nil || !strings.Contains(cfg, `"share_failures":true`) {
		t.Fatalf("share_failures on adapts to %s (%v)", cfg, err)
	}
	off := false
	u := Upstreams{ShareFailures: &off}
	if _, err := u.config(); err != nil {
		t.Fatal(err)
	}
	natsURL := startNATS(t)
	err = caddyLoadErr(fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n"+
		":%d {\n\tcx_proxy {\n\t\tshare_failures off\n\t}\n}\n:%d {\n\tcx_proxy\n}\n", natsURL, freePort(t), freePort(t)))
	t.Cleanup(func() { _ = caddy.Stop() })
	if err == nil || !strings.Contains(err.Error(), "share_failures off vs on") && !strings.Contains(err.Error(), "share_failures on vs off") {
		t.Fatalf("two sites of one prefix with different share_failures: %v", err)
	}
}

func caddyLoadErr(src string) error {
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
	if err != nil {
		return err
	}
	return caddy.Load(cfg, true)
}

// TestFleetReplayIgnored: a gateway heartbeat heard again (a replay, a
// duplicate) is counted as ignored, not as rejected: nothing is wrong.
func TestFleetReplayIgnored(t *testing.T) {
	natsURL := startNATS(t)
	nc := connect(t, natsURL)
	b := fleetGateway(t, natsURL, "gw-b", nil)
	peer := heartbeat.GatewayMessage{Proto: heartbeat.Proto, Kind: heartbeat.KindGateway, ID: "gw-x", State: "active",
		StartedAt: time.Now().UTC(), Seq: 1, IntervalMS: 1000}
	data, err := heartbeat.EncodeGateway(&peer)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := nc.Publish(heartbeat.GatewaySubject(heartbeat.DefaultPrefix, peer.ID), data); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 2*time.Second, func() bool { return b.stats.fleetMessage(fleetHeartbeat, fleetIgnored).Load() == 1 }, "the replay counted as ignored")
	if n := b.stats.fleetMessage(fleetHeartbeat, fleetRejected).Load(); n != 0 {
		t.Errorf("%d gateway heartbeats rejected, want 0", n)
	}
}
