package membership

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

const fleetPrefix = "cx.ha"

type gwMod func(*heartbeat.GatewayMessage)

func gwStarted(d time.Duration) gwMod {
	return func(m *heartbeat.GatewayMessage) { m.StartedAt = p0.Add(d) }
}
func gwPrimary(ids ...string) gwMod { return func(m *heartbeat.GatewayMessage) { m.Primary = ids } }
func gwLeaving() gwMod {
	return func(m *heartbeat.GatewayMessage) { m.State = heartbeat.GatewayStateLeaving }
}
func gwVersion(v string) gwMod  { return func(m *heartbeat.GatewayMessage) { m.Version = v } }
func gwInterval(ms int) gwMod   { return func(m *heartbeat.GatewayMessage) { m.IntervalMS = ms } }
func gwStart(t time.Time) gwMod { return func(m *heartbeat.GatewayMessage) { m.StartedAt = t } }

// gwBeat is a valid active heartbeat of gateway id with seq, started at p0,
// every second, routing to app1.
func gwBeat(t testing.TB, id string, seq int64, mods ...gwMod) (string, []byte) {
	t.Helper()
	m := &heartbeat.GatewayMessage{
		Proto: heartbeat.Proto, Kind: heartbeat.KindGateway, ID: id, State: heartbeat.GatewayStateActive,
		StartedAt: p0, Seq: seq, IntervalMS: 1000, Version: "v1", Primary: []string{"app1"},
	}
	for _, f := range mods {
		f(m)
	}
	data, err := heartbeat.EncodeGateway(m)
	if err != nil {
		t.Fatal(err)
	}
	return heartbeat.GatewaySubject(fleetPrefix, id), data
}

// obsMsg is an observation of gateway gw's process started at started,
// that app1 (started at p0) failed.
func obsMsg(t testing.TB, gw string, started time.Time, seq int64) (string, []byte) {
	t.Helper()
	o := &heartbeat.Observation{Proto: heartbeat.Proto, Kind: heartbeat.KindObservation, Gateway: gw,
		StartedAt: started, Seq: seq, Failed: []heartbeat.ObservedFailure{{ID: "app1", StartedAt: p0}}}
	data, err := heartbeat.EncodeGateway(o)
	if err != nil {
		t.Fatal(err)
	}
	return heartbeat.ObservationSubject(fleetPrefix, gw), data
}

type fleetRecorder struct {
	mu     sync.Mutex
	events []FleetEvent
}

func (r *fleetRecorder) on(ev FleetEvent) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *fleetRecorder) take() []FleetEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

// mustFleetEvents fails t unless the events since the last call are want,
// each "kind" or "kind/reason".
func (r *fleetRecorder) must(t testing.TB, want ...string) {
	t.Helper()
	var got []string
	events := r.take()
	for _, ev := range events {
		s := string(ev.Kind)
		if ev.Reason != "" {
			s += "/" + ev.Reason
		}
		got = append(got, s)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v (%+v)", got, want, events)
	}
}

func newFleet(cfg FleetConfig) (*Fleet, *fleetRecorder) {
	rec := &fleetRecorder{}
	cfg.Prefix = fleetPrefix
	cfg.OnEvent = rec.on
	return NewFleet(cfg), rec
}

func observeGW(t testing.TB, f *Fleet, now time.Time, id string, seq int64, mods ...gwMod) error {
	t.Helper()
	subject, data := gwBeat(t, id, seq, mods...)
	_, err := f.ObserveGateway(subject, data, now)
	return err
}

func gatewayOf(t testing.TB, f *Fleet, now time.Time, id string) Gateway {
	t.Helper()
	for _, g := range f.Gateways(now) {
		if g.ID == id {
			return g
		}
	}
	t.Fatalf("gateway %s unknown", id)
	return Gateway{}
}

func TestFleetJoinUpdateLeave(t *testing.T) {
	f, rec := newFleet(FleetConfig{Self: "gw1"})
	if err := observeGW(t, f, at(0), "gw1", 1); err != nil {
		t.Fatal(err)
	}
	if err := observeGW(t, f, at(0), "gw2", 1, gwPrimary("app2", "app1")); err != nil {
		t.Fatal(err)
	}
	rec.must(t, "join", "join")
	gws := f.Gateways(at(time.Second))
	if len(gws) != 2 || gws[0].ID != "gw1" || !gws[0].Self || gws[1].Self || gws[1].GatewayState != StateActiveName ||
		gws[1].StaleAfter != 3*time.Second || !slices.Equal(gws[1].Primary, []string{"app2", "app1"}) {
		t.Fatalf("gateways %+v", gws)
	}
	// copies: changing them changes nothing
	gws[1].Primary[0] = "x"
	if g := gatewayOf(t, f, at(time.Second), "gw2"); g.Primary[0] != "app2" {
		t.Fatal("Gateways handed out the fleet's own primary slice")
	}
	if err := observeGW(t, f, at(time.Second), "gw2", 2); err != nil {
		t.Fatal(err)
	}
	rec.must(t)
	if err := observeGW(t, f, at(2*time.Second), "gw2", 3, gwLeaving()); err != nil {
		t.Fatal(err)
	}
	rec.must(t, "leave")
	if g := gatewayOf(t, f, at(time.Hour), "gw2"); g.GatewayState != StateLeftName || !g.Since.Equal(at(2*time.Second)) {
		t.Fatalf("after leaving: %+v", g)
	}
	// after leaving, the process says nothing more that counts
	if err := observeGW(t, f, at(3*time.Second), "gw2", 4); !errors.Is(err, ErrGatewayIgnored) {
		t.Fatalf("heartbeat after leaving: %v", err)
	}
	// a new process rejoins
	if err := observeGW(t, f, at(4*time.Second), "gw2", 1, gwStarted(time.Minute)); err != nil {
		t.Fatal(err)
	}
	rec.must(t, "restart")
	if g := gatewayOf(t, f, at(4*time.Second), "gw2"); g.GatewayState != StateActiveName {
		t.Fatalf("restarted: %+v", g)
	}
}

func TestFleetLeavingOfUnknownIsIgnored(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	if err := observeGW(t, f, at(0), "gw2", 5, gwLeaving()); !errors.Is(err, ErrGatewayIgnored) {
		t.Fatalf("leaving of an unknown gateway: %v", err)
	}
	rec.must(t)
	if len(f.Gateways(at(0))) != 0 {
		t.Fatal("a leaving message made a gateway known")
	}
}

func TestFleetStalenessAtReadTime(t *testing.T) {
	f, _ := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 1, gwInterval(500))
	if g := gatewayOf(t, f, at(1500*time.Millisecond), "gw2"); g.GatewayState != StateActiveName {
		t.Fatalf("at 3 intervals: %s", g.GatewayState)
	}
	g := gatewayOf(t, f, at(1501*time.Millisecond), "gw2")
	if g.GatewayState != StateStaleName || !g.Since.Equal(at(1500*time.Millisecond)) {
		t.Fatalf("after 3 intervals: %s since %v", g.GatewayState, g.Since)
	}
	// the next heartbeat brings it back
	observeGW(t, f, at(5*time.Second), "gw2", 2, gwInterval(500))
	if g := gatewayOf(t, f, at(5*time.Second), "gw2"); g.GatewayState != StateActiveName {
		t.Fatalf("heard again: %s", g.GatewayState)
	}
}

// TestFleetFrozenWhileDisconnected: while this gateway is cut off from
// NATS, the others' silence proves nothing: they stay active, and after
// the reconnect each gets a fresh stale_after to be heard again. One
// already stale stays stale.
func TestFleetFrozenWhileDisconnected(t *testing.T) {
	f, _ := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 1, gwInterval(500))
	observeGW(t, f, at(0), "gw3", 1, gwInterval(100))
	f.Freeze(at(time.Second)) // gw3 (stale after 300ms) is stale by then
	if g := gatewayOf(t, f, at(time.Minute), "gw2"); g.GatewayState != StateActiveName {
		t.Fatalf("frozen a minute: gw2 %s", g.GatewayState)
	}
	if g := gatewayOf(t, f, at(time.Minute), "gw3"); g.GatewayState != StateStaleName {
		t.Fatalf("frozen: gw3, stale before the freeze, is %s", g.GatewayState)
	}
	f.Thaw(at(time.Minute))
	if g := gatewayOf(t, f, at(time.Minute+1500*time.Millisecond), "gw2"); g.GatewayState != StateActiveName {
		t.Fatalf("within stale_after of the reconnect: gw2 %s", g.GatewayState)
	}
	g := gatewayOf(t, f, at(time.Minute+1501*time.Millisecond), "gw2")
	if g.GatewayState != StateStaleName || !g.Since.Equal(at(time.Minute+1500*time.Millisecond)) {
		t.Fatalf("unheard for stale_after after the reconnect: gw2 %s since %v", g.GatewayState, g.Since)
	}
	if g := gatewayOf(t, f, at(time.Minute), "gw3"); g.GatewayState != StateStaleName {
		t.Fatalf("after the reconnect: gw3 %s", g.GatewayState)
	}
}

// Attack: a started_at far in the future would win every later
// comparison; one before 2000 or after 9999 is no real process.
func TestFleetClock(t *testing.T) {
	for name, start := range map[string]time.Time{
		"beyond skew":       t0.Add(DefaultClockSkew + time.Second),
		"year 1999":         time.Date(1999, 12, 31, 23, 0, 0, 0, time.UTC),
		"year 10000 in UTC": time.Date(9999, 12, 31, 23, 30, 0, 0, time.FixedZone("", -3600)),
	} {
		t.Run(name, func(t *testing.T) {
			f, rec := newFleet(FleetConfig{})
			var fe *FleetError
			if err := observeGW(t, f, at(0), "gw2", 1, gwStart(start)); !errors.As(err, &fe) || fe.Event.Reason != "clock" {
				t.Fatalf("accepted or not a clock refusal: %v", err)
			}
			rec.must(t, "rejected/clock")
			if len(f.Gateways(at(0))) != 0 {
				t.Fatal("a refused gateway is known")
			}
		})
	}
	f, rec := newFleet(FleetConfig{ClockSkew: time.Hour})
	if err := observeGW(t, f, at(0), "gw2", 1, gwStart(t0.Add(59*time.Minute))); err != nil {
		t.Fatalf("within a configured skew: %v", err)
	}
	rec.must(t, "join")
}

// Attack: replaying an old heartbeat must neither refresh the gateway nor
// bring back its old primary.
func TestFleetSeqReplayIgnored(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 5, gwPrimary("app1"))
	observeGW(t, f, at(time.Second), "gw2", 6, gwPrimary("app2"))
	rec.take()
	for _, seq := range []int64{6, 5, 1} {
		if err := observeGW(t, f, at(2900*time.Millisecond), "gw2", seq, gwPrimary("app1")); !errors.Is(err, ErrGatewayIgnored) {
			t.Fatalf("replay of seq %d: %v", seq, err)
		}
	}
	rec.must(t)
	g := gatewayOf(t, f, at(2900*time.Millisecond), "gw2")
	if !g.LastSeen.Equal(at(time.Second)) || !slices.Equal(g.Primary, []string{"app2"}) {
		t.Fatalf("replays changed the gateway: %+v", g)
	}
}

// Attack: a seq far ahead would make the real process's heartbeats look
// old, taking the gateway over.
func TestFleetImplausibleSeqJump(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 1)
	rec.take()
	var fe *FleetError
	if err := observeGW(t, f, at(time.Second), "gw2", 1+SeqSlack+SeqPerSecond+1, gwPrimary("evil")); !errors.As(err, &fe) || fe.Event.Kind != FleetConflict {
		t.Fatalf("implausible jump: %v", err)
	}
	rec.must(t, "conflict/seq")
	if err := observeGW(t, f, at(time.Second), "gw2", 2); err != nil {
		t.Fatalf("the real process after the jump: %v", err)
	}
	// a plausible gap is fine
	if err := observeGW(t, f, at(2*time.Second), "gw2", 2+SeqSlack); err != nil {
		t.Fatalf("plausible gap: %v", err)
	}
}

// Attack: a second process with an older started_at claims the id. It
// must never refresh the known one (keeping a dead gateway active) nor
// change what it routes to.
func TestFleetOlderProcessIsConflict(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 1, gwStarted(time.Minute))
	rec.take()
	// the first message of an older process may be a restart's straggler
	if err := observeGW(t, f, at(time.Second), "gw2", 10, gwPrimary("evil")); !errors.Is(err, ErrGatewayIgnored) {
		t.Fatalf("first older message: %v", err)
	}
	rec.must(t)
	for i := range 5 {
		err := observeGW(t, f, at(time.Duration(2+i)*time.Second), "gw2", int64(11+i), gwPrimary("evil"))
		var fe *FleetError
		if !errors.As(err, &fe) || fe.Event.Kind != FleetConflict {
			t.Fatalf("older process again: %v", err)
		}
	}
	rec.must(t, "conflict/process", "conflict/process", "conflict/process", "conflict/process", "conflict/process")
	g := gatewayOf(t, f, at(3*time.Second+time.Millisecond), "gw2")
	if !g.LastSeen.Equal(at(0)) || !slices.Equal(g.Primary, []string{"app1"}) || !g.StartedAt.Equal(p0.Add(time.Minute)) {
		t.Fatalf("the older process changed the known one: %+v", g)
	}
	if g.GatewayState != StateStaleName {
		t.Fatalf("the older process kept the known one alive: %s", g.GatewayState)
	}
	// its leaving changes nothing and is no conflict (a restart's old
	// process leaves after the new one started)
	if err := observeGW(t, f, at(4*time.Second), "gw2", 20, gwLeaving()); !errors.Is(err, ErrGatewayIgnored) {
		t.Fatalf("older leaving: %v", err)
	}
	rec.must(t)
}

// A restart's old process says goodbye after the new one said hello:
// neither a conflict nor a leave.
func TestFleetRestartStragglers(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 8)
	observeGW(t, f, at(time.Second), "gw2", 1, gwStarted(time.Minute))
	rec.must(t, "join", "restart")
	if err := observeGW(t, f, at(time.Second), "gw2", 9, gwLeaving()); !errors.Is(err, ErrGatewayIgnored) {
		t.Fatal(err)
	}
	rec.must(t)
	if g := gatewayOf(t, f, at(time.Second), "gw2"); g.GatewayState != StateActiveName {
		t.Fatalf("the old process's leaving made the new one %s", g.GatewayState)
	}
}

// Attack: a "leaving" forged with another started_at (newer or older)
// must not take the live gateway out of the fleet.
func TestFleetLeavingOnlyFromKnownProcess(t *testing.T) {
	for name, start := range map[string]time.Duration{"newer": time.Second, "older": -time.Second} {
		t.Run(name, func(t *testing.T) {
			f, rec := newFleet(FleetConfig{})
			observeGW(t, f, at(0), "gw2", 1)
			rec.take()
			if err := observeGW(t, f, at(time.Second), "gw2", 2, gwLeaving(), gwStarted(start)); !errors.Is(err, ErrGatewayIgnored) {
				t.Fatalf("forged leaving: %v", err)
			}
			rec.must(t)
			g := gatewayOf(t, f, at(time.Second), "gw2")
			if g.GatewayState != StateActiveName || !g.StartedAt.Equal(p0) {
				t.Fatalf("a forged leaving changed the gateway: %+v", g)
			}
			// the known process is unaffected
			if err := observeGW(t, f, at(time.Second), "gw2", 2); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Attack: a publisher floods heartbeats of one gateway.
func TestFleetRateBudget(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 1)
	rec.take()
	accepted := 0
	for seq := int64(2); seq < 200; seq++ {
		if observeGW(t, f, at(0), "gw2", seq) == nil {
			accepted++
		}
	}
	if accepted != RateBurst {
		t.Fatalf("%d accepted at one instant, want the burst %d (the join spends none)", accepted, RateBurst)
	}
	events := rec.take()
	if len(events) != 198-accepted || events[0].Reason != "rate" {
		t.Fatalf("%d events, first %+v", len(events), events[0])
	}
	// restarts (a newer started_at in every message) spend the same budget
	for i := range 50 {
		observeGW(t, f, at(0), "gw2", 1, gwStarted(time.Duration(i+1)*time.Millisecond))
	}
	if g := gatewayOf(t, f, at(0), "gw2"); !g.StartedAt.Equal(p0) {
		t.Fatalf("restarts beyond the rate were applied: started %v", g.StartedAt)
	}
	// the budget refills
	if err := observeGW(t, f, at(time.Second), "gw2", 500); err != nil {
		t.Fatalf("a second later: %v", err)
	}
}

// Attack: a flood of distinct gateway ids must not grow the fleet beyond
// MaxGateways, nor push out live gateways; stale and left ones make room.
func TestFleetCapacity(t *testing.T) {
	f, rec := newFleet(FleetConfig{MaxGateways: 4})
	for i := range 4 {
		observeGW(t, f, at(0), fmt.Sprintf("gw%d", i), 1)
	}
	rec.take()
	var fe *FleetError
	if err := observeGW(t, f, at(time.Second), "new", 1); !errors.As(err, &fe) || fe.Event.Reason != "capacity" {
		t.Fatalf("fifth live gateway: %v", err)
	}
	rec.must(t, "rejected/capacity")
	// gw0 leaves, gw1 goes stale; the others stay live
	observeGW(t, f, at(time.Second), "gw0", 2, gwLeaving())
	for _, id := range []string{"gw2", "gw3"} {
		observeGW(t, f, at(3500*time.Millisecond), id, 2)
	}
	rec.must(t, "leave")
	for _, id := range []string{"new1", "new2"} {
		if err := observeGW(t, f, at(3500*time.Millisecond), id, 1); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if err := observeGW(t, f, at(3500*time.Millisecond), "new3", 1); !errors.As(err, &fe) {
		t.Fatalf("new3: %v", err)
	}
	rec.must(t, "join", "join", "rejected/capacity")
	var got []string
	for _, g := range f.Gateways(at(3500 * time.Millisecond)) {
		got = append(got, g.ID)
	}
	if want := []string{"gw2", "gw3", "new1", "new2"}; !slices.Equal(got, want) {
		t.Fatalf("gateways %v, want %v", got, want)
	}
}

func TestFleetFloodOfDistinctIDs(t *testing.T) {
	var n int
	f := NewFleet(FleetConfig{Prefix: fleetPrefix, OnEvent: func(FleetEvent) { n++ }})
	for i := range 10000 {
		subject, data := gwBeat(t, fmt.Sprintf("x%d", i), 1)
		f.ObserveGateway(subject, data, at(time.Duration(i)*time.Millisecond))
		f.mu.Lock()
		size := len(f.gateways)
		f.mu.Unlock()
		if size > DefaultMaxGateways {
			t.Fatalf("%d gateways after %d messages", size, i+1)
		}
	}
	if n != 10000 {
		t.Fatalf("%d events for 10000 messages, want one each", n)
	}
	// garbage on both subjects: one event each, nothing kept
	n = 0
	for i := range 10000 {
		f.ObserveGateway(fmt.Sprintf("cx.ha.gw.y%d", i), []byte(`{"proto":1}`), at(0))
		f.ObserveFailures(fmt.Sprintf("cx.ha.obs.y%d", i), []byte(`garbage`), at(0))
	}
	if n != 20000 {
		t.Fatalf("%d events for 20000 garbage messages", n)
	}
	if got := len(f.Gateways(at(10 * time.Second))); got > DefaultMaxGateways {
		t.Fatalf("%d gateways", got)
	}
}

func TestFleetSplit(t *testing.T) {
	f, _ := newFleet(FleetConfig{Self: "gw1"})
	observeGW(t, f, at(0), "gw1", 1, gwPrimary("app1", "app2"))
	observeGW(t, f, at(0), "gw2", 1, gwPrimary("app2", "app1")) // order does not matter
	if _, split := f.Split(at(0)); split {
		t.Fatal("split while agreeing")
	}
	observeGW(t, f, at(time.Second), "gw2", 2, gwPrimary("app3"))
	observeGW(t, f, at(1500*time.Millisecond), "gw1", 2, gwPrimary("app1", "app2"))
	since, split := f.Split(at(2 * time.Second))
	if !split || !since.Equal(at(time.Second)) {
		t.Fatalf("split %v since %v, want since the first disagreement %v", split, since, at(time.Second))
	}
	// agreement clears it
	observeGW(t, f, at(2*time.Second), "gw1", 3, gwPrimary("app3"))
	if _, split := f.Split(at(2 * time.Second)); split {
		t.Fatal("still split after agreeing")
	}
	// disagreeing again starts a new split
	observeGW(t, f, at(3*time.Second), "gw2", 3, gwPrimary("app4"))
	if since, split := f.Split(at(3 * time.Second)); !split || !since.Equal(at(3*time.Second)) {
		t.Fatalf("second split %v since %v", split, since)
	}
	// a stale gateway's old primary does not count
	observeGW(t, f, at(5500*time.Millisecond), "gw1", 4, gwPrimary("app3"))
	observeGW(t, f, at(5500*time.Millisecond), "gw3", 1, gwPrimary("app3"))
	if _, split := f.Split(at(6500 * time.Millisecond)); split {
		t.Fatal("a stale gateway's primary counted")
	}
	// a left gateway's neither
	observeGW(t, f, at(6500*time.Millisecond), "gw2", 4, gwPrimary("app9"))
	if _, split := f.Split(at(6500 * time.Millisecond)); !split {
		t.Fatal("gw2 back and disagreeing, no split")
	}
	observeGW(t, f, at(6600*time.Millisecond), "gw2", 5, gwPrimary("app9"), gwLeaving())
	if _, split := f.Split(at(6600 * time.Millisecond)); split {
		t.Fatal("a left gateway's primary counted")
	}
}

func TestFleetVersions(t *testing.T) {
	f, _ := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw1", 1, gwVersion("v2"))
	observeGW(t, f, at(0), "gw2", 1, gwVersion("v1"))
	observeGW(t, f, at(0), "gw3", 1, gwVersion("v2"))
	observeGW(t, f, at(0), "gw4", 1, gwVersion("v0"), gwInterval(100))
	if got := f.Versions(at(0)); !slices.Equal(got, []string{"v0", "v1", "v2"}) {
		t.Fatalf("versions %v", got)
	}
	if got := f.Versions(at(time.Second)); !slices.Equal(got, []string{"v1", "v2"}) {
		t.Fatalf("versions with gw4 stale %v", got)
	}
}

func TestFleetObservations(t *testing.T) {
	f, rec := newFleet(FleetConfig{Self: "gw1"})
	observeGW(t, f, at(0), "gw1", 1)
	observeGW(t, f, at(0), "gw2", 1)
	rec.take()

	subject, data := obsMsg(t, "gw2", p0, 1)
	o, err := f.ObserveFailures(subject, data, at(time.Second))
	if err != nil || o == nil || o.Gateway != "gw2" || o.Failed[0].ID != "app1" {
		t.Fatalf("observation of a live gateway: %+v, %v", o, err)
	}
	// its own: already applied
	subject, data = obsMsg(t, "gw1", p0, 1)
	if o, err := f.ObserveFailures(subject, data, at(time.Second)); o != nil || err != nil {
		t.Fatalf("own observation: %+v, %v", o, err)
	}
	rec.must(t)

	cases := map[string]struct {
		gw      string
		started time.Time
		seq     int64
		now     time.Duration
		err     error
		reason  string
	}{
		"unknown gateway":       {gw: "gw9", started: p0, seq: 1, now: time.Second, err: ErrUnannounced, reason: "unannounced"},
		"spoofed process":       {gw: "gw2", started: p0.Add(time.Second), seq: 5, now: time.Second, err: ErrUnannounced, reason: "unannounced"},
		"spoofed older process": {gw: "gw2", started: p0.Add(-time.Second), seq: 5, now: time.Second, err: ErrUnannounced, reason: "unannounced"},
		"replayed seq":          {gw: "gw2", started: p0, seq: 1, now: time.Second, err: ErrObservationSeq, reason: "seq"},
		"stale gateway":         {gw: "gw2", started: p0, seq: 9, now: 3001 * time.Millisecond, err: ErrUnannounced, reason: "unannounced"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			subject, data := obsMsg(t, c.gw, c.started, c.seq)
			o, err := f.ObserveFailures(subject, data, at(c.now))
			if o != nil || !errors.Is(err, c.err) {
				t.Fatalf("%+v, %v; want %v", o, err, c.err)
			}
			rec.must(t, "ignored/"+c.reason)
		})
	}
	// a left gateway's observations are unannounced too
	observeGW(t, f, at(time.Second), "gw2", 2, gwLeaving())
	rec.take()
	subject, data = obsMsg(t, "gw2", p0, 10)
	if _, err := f.ObserveFailures(subject, data, at(time.Second)); !errors.Is(err, ErrUnannounced) {
		t.Fatalf("left gateway: %v", err)
	}
	// garbage: ignored with the field as reason
	if _, err := f.ObserveFailures("cx.ha.obs.gw2", []byte(`{}`), at(time.Second)); err == nil {
		t.Fatal("garbage accepted")
	}
	rec.must(t, "ignored/unannounced", "ignored/proto")

	// with the own process known, another process on the own id is
	// counted, not taken for the own
	own, rec := newFleet(FleetConfig{Self: "gw1", SelfStartedAt: p0})
	observeGW(t, own, at(0), "gw1", 1)
	rec.take()
	subject, data = obsMsg(t, "gw1", p0, 1)
	if o, err := own.ObserveFailures(subject, data, at(time.Second)); o != nil || err != nil {
		t.Fatalf("own observation: %+v, %v", o, err)
	}
	subject, data = obsMsg(t, "gw1", p0.Add(time.Second), 2)
	if o, err := own.ObserveFailures(subject, data, at(time.Second)); o != nil || !errors.Is(err, ErrUnannounced) {
		t.Fatalf("another process on the own id: %+v, %v", o, err)
	}
	rec.must(t, "ignored/unannounced")
}

// Attack: an announced gateway (or one spoofing it) floods observations.
func TestFleetObservationRate(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	observeGW(t, f, at(0), "gw2", 1)
	rec.take()
	accepted := 0
	for seq := int64(1); seq <= 100; seq++ {
		subject, data := obsMsg(t, "gw2", p0, seq)
		if o, _ := f.ObserveFailures(subject, data, at(time.Second)); o != nil {
			accepted++
		}
	}
	if accepted != ObservationBurst {
		t.Fatalf("%d accepted at one instant, want %d", accepted, ObservationBurst)
	}
	if ev := rec.take(); len(ev) != 100-ObservationBurst || ev[0].Reason != "rate" {
		t.Fatalf("%d events: %+v", len(ev), ev[:1])
	}
	// refused ones did not advance the seq: the next in a later window counts
	subject, data := obsMsg(t, "gw2", p0, ObservationBurst+1)
	if o, err := f.ObserveFailures(subject, data, at(time.Second+time.Second/ObservationRate)); o == nil {
		t.Fatalf("after refill: %v", err)
	}
	// a restarted gateway process starts its seq again
	observeGW(t, f, at(2*time.Second), "gw2", 1, gwStarted(time.Minute))
	subject, data = obsMsg(t, "gw2", p0.Add(time.Minute), 1)
	if o, err := f.ObserveFailures(subject, data, at(3*time.Second)); o == nil {
		t.Fatalf("first observation of a new process: %v", err)
	}
}

func TestFleetClose(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	f.Close()
	observeGW(t, f, at(0), "gw2", 1)
	f.ObserveGateway("cx.ha.gw.x", nil, at(0))
	rec.must(t)
}

func TestFleetRejectedEventsSanitiseIDs(t *testing.T) {
	f, rec := newFleet(FleetConfig{})
	f.ObserveGateway("cx.ha.gw.bad id\n", []byte(`{}`), at(0))
	ev := rec.take()
	if len(ev) != 1 || ev[0].Gateway != "" || ev[0].Reason != "subject" {
		t.Fatalf("%+v", ev)
	}
}

// Attack: a publisher speaks for this gateway's own id with a newer
// process, to change what this gateway shows as its own primary or to
// make it look left.
func TestFleetSelfProcess(t *testing.T) {
	f, rec := newFleet(FleetConfig{Self: "gw1", SelfStartedAt: p0})
	if err := observeGW(t, f, at(0), "gw1", 1); err != nil {
		t.Fatal(err)
	}
	rec.must(t, "join")
	for _, mods := range [][]gwMod{
		{gwStarted(time.Second), gwPrimary("evil")},
		{gwStarted(time.Second), gwLeaving()},
		{gwStarted(-time.Second)},
	} {
		var fe *FleetError
		if err := observeGW(t, f, at(time.Second), "gw1", 2, mods...); !errors.As(err, &fe) || fe.Event.Reason != "self" {
			t.Fatalf("another process on the own id: %v", err)
		}
	}
	rec.must(t, "conflict/self", "conflict/self", "conflict/self")
	g := gatewayOf(t, f, at(time.Second), "gw1")
	if !g.Self || !g.StartedAt.Equal(p0) || !slices.Equal(g.Primary, []string{"app1"}) || g.GatewayState != StateActiveName {
		t.Fatalf("own gateway changed: %+v", g)
	}
	// without SelfStartedAt, a newer process is a restart, as for others
	f2, _ := newFleet(FleetConfig{Self: "gw1"})
	observeGW(t, f2, at(0), "gw1", 1)
	if err := observeGW(t, f2, at(time.Second), "gw1", 1, gwStarted(time.Second)); err != nil {
		t.Fatal(err)
	}
}
