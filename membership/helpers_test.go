package membership

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// t0 is the gateway clock's origin in tests; p0 is when the instances
// started (the sender's clock, only compared).
var (
	t0 = time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC)
	p0 = time.Date(2026, 11, 25, 20, 0, 0, 123456789, time.UTC)
)

// at is the gateway's clock d after t0.
func at(d time.Duration) time.Time { return t0.Add(d) }

type mod func(*heartbeat.Message)

func withState(s heartbeat.State) mod { return func(m *heartbeat.Message) { m.State = s } }
func withStart(t time.Time) mod       { return func(m *heartbeat.Message) { m.StartedAt = t } }
func withURL(u string) mod            { return func(m *heartbeat.Message) { m.URL = u } }
func withPriority(p int) mod          { return func(m *heartbeat.Message) { m.Priority = p } }
func withInterval(ms int) mod         { return func(m *heartbeat.Message) { m.IntervalMS = ms } }
func withVersion(v string) mod        { return func(m *heartbeat.Message) { m.Version = v } }
func withMeta(k, v string) mod {
	return func(m *heartbeat.Message) { m.Meta = map[string]string{k: v} }
}
func withRoles(roles ...string) mod { return func(m *heartbeat.Message) { m.LeaderRoles = roles } }
func started(d time.Duration) mod   { return withStart(p0.Add(d)) }
func draining() mod                 { return withState(heartbeat.StateDraining) }
func leaving() mod                  { return withState(heartbeat.StateLeaving) }
func ready() mod                    { return withState(heartbeat.StateReady) }

// beat is a valid ready heartbeat of id with seq, started at p0, every second.
func beat(id string, seq int64, mods ...mod) *heartbeat.Message {
	m := &heartbeat.Message{
		Proto:      heartbeat.Proto,
		ID:         id,
		URL:        "http://10.0.0.1:8080",
		State:      heartbeat.StateReady,
		StartedAt:  p0,
		Seq:        seq,
		IntervalMS: 1000,
	}
	for _, f := range mods {
		f(m)
	}
	return m
}

// recorder collects the registry's events.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) on(ev Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

// take returns and clears the events so far.
func (r *recorder) take() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := r.events
	r.events = nil
	return ev
}

func kinds(events []Event) []EventKind {
	out := make([]EventKind, len(events))
	for i, ev := range events {
		out[i] = ev.Kind
	}
	return out
}

// newReg returns a registry with cfg and an event recorder.
func newReg(t testing.TB, cfg Config) (*Registry, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg.OnEvent = rec.on
	if cfg.RebuildEvery == 0 {
		cfg.RebuildEvery = tablesRebuildEvery
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r, rec
}

func member(t testing.TB, r *Registry, id string) (Member, bool) {
	t.Helper()
	for _, m := range r.Members() {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

func mustState(t testing.TB, r *Registry, id string, want State) {
	t.Helper()
	m, ok := member(t, r, id)
	if !ok {
		t.Fatalf("%s: not a member, want state %s", id, want)
	}
	if m.State != want {
		t.Fatalf("%s: state %s, want %s", id, m.State, want)
	}
}

func routedIDs(s *Snapshot) []string {
	out := make([]string, len(s.Routes))
	for i, rt := range s.Routes {
		out[i] = rt.ID
	}
	return out
}

func mustRouted(t testing.TB, r *Registry, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if got := routedIDs(settled(t, r)); !slices.Equal(got, want) {
		t.Fatalf("routed %v, want %v", got, want)
	}
}

func mustKinds(t testing.TB, rec *recorder, want ...EventKind) []Event {
	t.Helper()
	ev := rec.take()
	if got := kinds(ev); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v (%+v)", got, want, ev)
	}
	return ev
}
