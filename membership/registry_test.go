package membership

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

func TestJoinIsActiveAndRouted(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("app1", 1, withURL("http://10.0.0.11:8080/"), withVersion("2026.4.1")), at(0))

	ev := mustKinds(t, rec, EventJoin)
	if ev[0].ID != "app1" || ev[0].URL != "http://10.0.0.11:8080/" {
		t.Errorf("join event %+v", ev[0])
	}
	mustState(t, r, "app1", StateActive)
	s := r.Snapshot()
	want := []Route{{ID: "app1", Dial: "10.0.0.11:8080", Priority: 0, Version: "2026.4.1", ActiveSince: at(0)}}
	if !slices.Equal(s.Routes, want) || !slices.Equal(s.Tiers, []int{1}) {
		t.Fatalf("snapshot %+v, want routes %+v tiers [1]", s, want)
	}
	m, _ := member(t, r, "app1")
	if m.Seq != 1 || !m.StartedAt.Equal(p0) || m.Interval != time.Second || m.StaleAfter != 3*time.Second ||
		!m.LastSeen.Equal(at(0)) || !m.Since.Equal(at(0)) {
		t.Errorf("member %+v", m)
	}
}

func TestStateTransitions(t *testing.T) {
	type step struct {
		msg    *heartbeat.Message
		state  State // "" means not a member
		routed bool
		events []EventKind
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"draining is known, not routed", []step{
			{beat("a", 1), StateActive, true, []EventKind{EventJoin}},
			{beat("a", 2, draining()), StateDraining, false, []EventKind{EventDraining}},
			{beat("a", 3, draining()), StateDraining, false, nil},
			{beat("a", 4), StateActive, true, []EventKind{EventReady}},
		}},
		{"join while draining", []step{
			{beat("a", 1, draining()), StateDraining, false, []EventKind{EventJoin}},
			{beat("a", 2), StateActive, true, []EventKind{EventReady}},
		}},
		{"leaving from active", []step{
			{beat("a", 1), StateActive, true, []EventKind{EventJoin}},
			{beat("a", 2, leaving()), StateLeft, false, []EventKind{EventLeave}},
		}},
		{"leaving from draining", []step{
			{beat("a", 1), StateActive, true, []EventKind{EventJoin}},
			{beat("a", 2, draining()), StateDraining, false, []EventKind{EventDraining}},
			{beat("a", 3, leaving()), StateLeft, false, []EventKind{EventLeave}},
		}},
		{"leaving is final for its started_at", []step{
			{beat("a", 1), StateActive, true, []EventKind{EventJoin}},
			{beat("a", 2, leaving()), StateLeft, false, []EventKind{EventLeave}},
			{beat("a", 3), StateLeft, false, nil},
			{beat("a", 100, draining()), StateLeft, false, nil},
			{beat("a", 101, leaving()), StateLeft, false, nil},
		}},
		{"leaving of an unknown id is ignored", []step{
			{beat("a", 7, leaving()), "", false, nil},
		}},
		{"duplicate and reordered are ignored", []step{
			{beat("a", 5), StateActive, true, []EventKind{EventJoin}},
			{beat("a", 5, draining()), StateActive, true, nil},
			{beat("a", 3, leaving()), StateActive, true, nil},
			{beat("a", 4, draining()), StateActive, true, nil},
			{beat("a", 9, draining()), StateDraining, false, []EventKind{EventDraining}},
			{beat("a", 8), StateDraining, false, nil},
			{beat("a", 10), StateActive, true, []EventKind{EventReady}},
		}},
		{"gaps in seq are normal", []step{
			{beat("a", 1), StateActive, true, []EventKind{EventJoin}},
			{beat("a", 1000, draining()), StateDraining, false, []EventKind{EventDraining}},
			{beat("a", 1000+SeqSlack+SeqPerSecond, draining()), StateDraining, false, nil},
			{beat("a", heartbeat.MaxSeq), StateDraining, false, []EventKind{EventConflict}}, // implausible: not this process
		}},
		{"the last seq is accepted", []step{
			{beat("a", heartbeat.MaxSeq-1), StateActive, true, []EventKind{EventJoin}},
			{beat("a", heartbeat.MaxSeq, draining()), StateDraining, false, []EventKind{EventDraining}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, Config{})
			for i, st := range tt.steps {
				r.Apply(st.msg, at(time.Duration(i)*time.Second))
				if got := kinds(rec.take()); !slices.Equal(got, st.events) {
					t.Fatalf("step %d: events %v, want %v", i, got, st.events)
				}
				m, ok := member(t, r, "a")
				if st.state == "" {
					if ok {
						t.Fatalf("step %d: a is a member (%s), want none", i, m.State)
					}
				} else if !ok || m.State != st.state {
					t.Fatalf("step %d: state %q (member %v), want %s", i, m.State, ok, st.state)
				}
				if routed := slices.Contains(routedIDs(settled(t, r)), "a"); routed != st.routed {
					t.Fatalf("step %d: routed %v, want %v", i, routed, st.routed)
				}
			}
		})
	}
}

func TestSeqIsPerProcess(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("a", 50), at(0))
	r.Apply(beat("a", 1, started(time.Minute)), at(time.Second)) // restart: seq starts over
	m, _ := member(t, r, "a")
	if m.Seq != 1 || !m.StartedAt.Equal(p0.Add(time.Minute)) {
		t.Fatalf("after restart: seq %d started %v", m.Seq, m.StartedAt)
	}
	r.Apply(beat("a", 2, started(time.Minute), draining()), at(2*time.Second))
	mustState(t, r, "a", StateDraining)
}

func TestRestart(t *testing.T) {
	tests := []struct {
		name   string
		before []*heartbeat.Message
	}{
		{"from active", []*heartbeat.Message{beat("a", 10)}},
		{"from draining", []*heartbeat.Message{beat("a", 10, draining())}},
		{"after left", []*heartbeat.Message{beat("a", 10), beat("a", 11, leaving())}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, Config{})
			for _, m := range tt.before {
				r.Apply(m, at(0))
			}
			rec.take()
			r.Apply(beat("a", 1, started(time.Hour), withURL("http://10.0.0.2:9090"), withVersion("v2")), at(time.Second))
			ev := mustKinds(t, rec, EventRestart)
			if ev[0].URL != "http://10.0.0.2:9090" {
				t.Errorf("restart event %+v", ev[0])
			}
			mustState(t, r, "a", StateActive)
			s := settled(t, r)
			if len(s.Routes) != 1 || s.Routes[0].Dial != "10.0.0.2:9090" || s.Routes[0].Version != "v2" {
				t.Fatalf("routes %+v", s.Routes)
			}
			// The new process's own messages are judged by its own seq.
			r.Apply(beat("a", 2, started(time.Hour), withURL("http://10.0.0.2:9090"), leaving()), at(2*time.Second))
			mustState(t, r, "a", StateLeft)
			mustKinds(t, rec, EventLeave)
		})
	}
}

func TestRestartOfStaleMember(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 1), at(0))
	r.Sweep(at(time.Minute))
	mustState(t, r, "a", StateStale)
	rec.take()
	r.Apply(beat("a", 1, started(time.Hour)), at(time.Minute+time.Second))
	mustKinds(t, rec, EventRestart)
	mustState(t, r, "a", StateActive)
	mustRouted(t, r, "a")
}

func TestEarlierStartedAtIgnored(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 5, started(time.Hour)), at(0))
	rec.take()
	gen := r.Snapshot()
	for i, m := range []*heartbeat.Message{
		beat("a", 99, withURL("http://10.9.9.9:1")),
		beat("a", 100, leaving()),
		beat("a", 101, draining()),
	} {
		r.Apply(m, at(time.Duration(i+1)*time.Second))
	}
	mustState(t, r, "a", StateActive)
	mustRouted(t, r, "a")
	if r.Snapshot() != gen {
		t.Errorf("snapshot rebuilt by an older process's messages")
	}
	if m, _ := member(t, r, "a"); m.Seq != 5 || m.URL != "http://10.0.0.1:8080" {
		t.Errorf("member changed by an older process: %+v", m)
	}
	for _, ev := range rec.take() {
		if ev.Kind != EventConflict {
			t.Errorf("unexpected event %+v", ev)
		}
	}
}

func TestIDConflict(t *testing.T) {
	older := func(seq int64) *heartbeat.Message { return beat("a", seq, withURL("http://10.0.0.1:1")) }
	newer := func(seq int64) *heartbeat.Message {
		return beat("a", seq, started(time.Hour), withURL("http://10.0.0.2:2"))
	}
	tests := []struct {
		name string
		msgs []*heartbeat.Message
		// conflicts expected over the whole run (at least)
		minConflicts int
	}{
		{"older seen first", []*heartbeat.Message{older(1), newer(1), older(2), newer(2), older(3), newer(3), older(4)}, 3},
		{"newer seen first", []*heartbeat.Message{newer(7), older(7), newer(8), older(8), newer(9), older(9)}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, Config{})
			for i, m := range tt.msgs {
				r.Apply(m, at(time.Duration(i)*100*time.Millisecond))
			}
			conflicts := 0
			for _, ev := range rec.take() {
				switch ev.Kind {
				case EventConflict:
					conflicts++
					if ev.ID != "a" {
						t.Errorf("conflict event %+v", ev)
					}
				case EventJoin, EventRestart:
				default:
					t.Errorf("unexpected event %+v", ev)
				}
			}
			if conflicts < tt.minConflicts {
				t.Errorf("%d conflicts, want at least %d", conflicts, tt.minConflicts)
			}
			m, _ := member(t, r, "a")
			if !m.StartedAt.Equal(p0.Add(time.Hour)) || m.State != StateActive {
				t.Fatalf("newest process did not win: %+v", m)
			}
			s := settled(t, r)
			if len(s.Routes) != 1 || s.Routes[0].Dial != "10.0.0.2:2" {
				t.Fatalf("routes %+v, want the newer process only", s.Routes)
			}
		})
	}
}

func TestStragglerOfPreviousProcessIsNotAConflict(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 5), at(0))
	r.Apply(beat("a", 1, started(time.Hour)), at(time.Second))
	r.Apply(beat("a", 5), at(2*time.Second))            // duplicate of the old process's last
	r.Apply(beat("a", 4), at(3*time.Second))            // reordered
	r.Apply(beat("a", 6, leaving()), at(4*time.Second)) // the old process says goodbye
	mustKinds(t, rec, EventJoin, EventRestart)
	mustRouted(t, r, "a")
}

func TestStaleness(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		intervalMS int
		staleAfter time.Duration
	}{
		{"default is 3x interval", Config{}, 1000, 3 * time.Second},
		{"default with slow interval", Config{}, 60000, 3 * time.Minute},
		{"default with fast interval", Config{}, 100, 300 * time.Millisecond},
		{"configured", Config{StaleAfter: 1500 * time.Millisecond}, 1000, 1500 * time.Millisecond},
		{"configured longer than 3x", Config{StaleAfter: 10 * time.Second}, 100, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, tt.cfg)
			r.Apply(beat("a", 1, withInterval(tt.intervalMS)), at(0))
			r.Apply(beat("b", 1, withInterval(tt.intervalMS), draining()), at(0))
			rec.take()
			if m, _ := member(t, r, "a"); m.StaleAfter != tt.staleAfter {
				t.Fatalf("StaleAfter %v, want %v", m.StaleAfter, tt.staleAfter)
			}
			r.Sweep(at(tt.staleAfter - time.Nanosecond))
			mustState(t, r, "a", StateActive)
			mustState(t, r, "b", StateDraining)
			mustRouted(t, r, "a")
			mustKinds(t, rec)

			// "active while its last heartbeat is younger than stale_after"
			r.Sweep(at(tt.staleAfter))
			mustState(t, r, "a", StateStale)
			mustState(t, r, "b", StateStale)
			mustRouted(t, r)
			ev := rec.take()
			if got := kinds(ev); !slices.Equal(got, []EventKind{EventStale, EventStale}) {
				t.Fatalf("events %v", got)
			}
			if m, _ := member(t, r, "a"); !m.Since.Equal(at(tt.staleAfter)) || !m.LastSeen.Equal(at(0)) {
				t.Errorf("stale member %+v", m)
			}
			// Staying stale emits nothing more.
			r.Sweep(at(tt.staleAfter + time.Second))
			mustKinds(t, rec)
		})
	}
}

func TestHeartbeatsKeepMemberActive(t *testing.T) {
	r, _ := newReg(t, Config{})
	for i := range 100 {
		now := at(time.Duration(i) * 2 * time.Second)
		r.Apply(beat("a", int64(i+1), withInterval(1000)), now)
		r.Sweep(now.Add(2 * time.Second))
		mustState(t, r, "a", StateActive)
	}
}

func TestStaleMemberComesBack(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 1), at(0))
	r.Sweep(at(10 * time.Second))
	mustState(t, r, "a", StateStale)
	rec.take()

	// An old message (seq not greater) does not revive it.
	r.Apply(beat("a", 1), at(11*time.Second))
	mustState(t, r, "a", StateStale)
	mustRouted(t, r)

	r.Apply(beat("a", 2), at(12*time.Second))
	mustKinds(t, rec, EventReady)
	mustState(t, r, "a", StateActive)
	mustRouted(t, r, "a")

	// And it turns stale again from its new last heartbeat.
	r.Sweep(at(14 * time.Second))
	mustState(t, r, "a", StateActive)
	r.Sweep(at(15 * time.Second))
	mustState(t, r, "a", StateStale)

	// A stale member may come back draining.
	r.Apply(beat("a", 3, draining()), at(16*time.Second))
	mustState(t, r, "a", StateDraining)
	mustRouted(t, r)
}

func TestForgetAfter(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		forget time.Duration
	}{
		{"default", Config{}, DefaultForgetAfter},
		{"configured", Config{ForgetAfter: 30 * time.Second}, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, tt.cfg)
			r.Apply(beat("stale", 1), at(0))
			r.Apply(beat("left", 1), at(0))
			r.Apply(beat("left", 2, leaving()), at(time.Second))
			r.Apply(beat("live", 1), at(0))
			r.Sweep(at(3 * time.Second)) // stale turns stale at 3s; left since 1s
			mustState(t, r, "stale", StateStale)
			rec.take()

			for now := 3 * time.Second; now < tt.forget+5*time.Second; now += time.Second {
				r.Apply(beat("live", int64(now/time.Second)), at(now))
				r.Sweep(at(now))
			}
			if len(r.Members()) != 1 {
				t.Fatalf("members %+v, want only live", r.Members())
			}
			ev := rec.take()
			var forgot []string
			for _, e := range ev {
				if e.Kind == EventForget {
					forgot = append(forgot, e.ID)
				}
			}
			slices.Sort(forgot)
			if !slices.Equal(forgot, []string{"left", "stale"}) {
				t.Fatalf("forgotten %v (%+v)", forgot, ev)
			}

			// Listed until forget_after: check the edges precisely.
			r2, _ := newReg(t, tt.cfg)
			r2.Apply(beat("x", 1), at(0))
			r2.Apply(beat("x", 2, leaving()), at(0))
			r2.Sweep(at(tt.forget))
			if _, ok := member(t, r2, "x"); !ok {
				t.Fatalf("left member forgotten at exactly forget_after")
			}
			r2.Sweep(at(tt.forget + time.Millisecond))
			if _, ok := member(t, r2, "x"); ok {
				t.Fatalf("left member still listed after forget_after")
			}
			// A forgotten id that comes back joins anew.
			r2.Apply(beat("x", 1, started(time.Hour)), at(tt.forget+time.Second))
			mustState(t, r2, "x", StateActive)
		})
	}
}

func TestFreezeThaw(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 1), at(0))
	r.Apply(beat("b", 1, draining()), at(0))
	r.Apply(beat("c", 1), at(0))
	r.Apply(beat("c", 2, leaving()), at(0))
	rec.take()

	r.Freeze()
	if !r.Frozen() {
		t.Fatal("not frozen after Freeze")
	}
	for d := time.Second; d <= time.Hour; d += 7 * time.Second {
		r.Sweep(at(d))
		mustState(t, r, "a", StateActive)
		mustState(t, r, "b", StateDraining)
	}
	mustRouted(t, r, "a")
	for _, ev := range rec.take() {
		if ev.Kind == EventStale {
			t.Fatalf("stale while frozen: %+v", ev)
		}
	}

	thaw := at(2 * time.Hour)
	r.Thaw(thaw)
	if r.Frozen() {
		t.Fatal("frozen after Thaw")
	}
	// A fresh stale_after from the thaw, not from the last heartbeat.
	r.Sweep(thaw.Add(3*time.Second - time.Nanosecond))
	mustState(t, r, "a", StateActive)
	mustState(t, r, "b", StateDraining)
	mustRouted(t, r, "a")
	if m, _ := member(t, r, "a"); !m.LastSeen.Equal(at(0)) {
		t.Errorf("Thaw changed LastSeen to %v; it is the last heartbeat's time", m.LastSeen)
	}
	r.Sweep(thaw.Add(3 * time.Second))
	mustState(t, r, "a", StateStale)
	mustState(t, r, "b", StateStale)
	mustRouted(t, r)

	// Thaw of a registry that is not frozen changes nothing.
	r2, _ := newReg(t, Config{})
	r2.Apply(beat("a", 1), at(0))
	r2.Thaw(at(time.Hour))
	r2.Sweep(at(time.Hour))
	mustState(t, r2, "a", StateStale)
}

func TestHeartbeatAfterThaw(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("a", 1), at(0))
	r.Freeze()
	r.Thaw(at(10 * time.Second))
	r.Apply(beat("a", 2), at(20*time.Second)) // later than the thaw: judged from it
	r.Sweep(at(22 * time.Second))
	mustState(t, r, "a", StateActive)
	r.Sweep(at(23 * time.Second))
	mustState(t, r, "a", StateStale)
}

func TestOrderingAndTiers(t *testing.T) {
	r, _ := newReg(t, Config{})
	type in struct {
		id      string
		prio    int
		started time.Duration
		state   heartbeat.State
	}
	for i, m := range []in{
		{"z", 0, 3 * time.Second, heartbeat.StateReady},
		{"y", 0, 1 * time.Second, heartbeat.StateReady},
		{"b", 0, 1 * time.Second, heartbeat.StateReady}, // same started_at as y: id decides
		{"backup2", 10, 0, heartbeat.StateReady},
		{"backup1", 10, -time.Hour, heartbeat.StateReady},
		{"best", -5, -9 * time.Hour, heartbeat.StateReady},
		{"off", -100, 0, heartbeat.StateDraining}, // not routed, no tier
		{"last", 1000, 0, heartbeat.StateReady},
	} {
		r.Apply(beat(m.id, 1, withPriority(m.prio), started(m.started), withState(m.state)), at(time.Duration(i)))
	}
	s := r.Snapshot()
	if got, want := routedIDs(s), []string{"best", "b", "y", "z", "backup1", "backup2", "last"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if want := []int{1, 4, 6, 7}; !slices.Equal(s.Tiers, want) {
		t.Fatalf("tiers %v, want %v", s.Tiers, want)
	}
	wantTiers := [][]string{{"best"}, {"b", "y", "z"}, {"backup1", "backup2"}, {"last"}}
	for i, want := range wantTiers {
		tier := s.Tier(i)
		ids := make([]string, len(tier))
		for j, rt := range tier {
			ids[j] = rt.ID
		}
		if !slices.Equal(ids, want) {
			t.Errorf("tier %d: %v, want %v", i, ids, want)
		}
	}
	// Members lists everyone in the same order, routed or not.
	var all []string
	for _, m := range r.Members() {
		all = append(all, m.ID)
	}
	if want := []string{"off", "best", "b", "y", "z", "backup1", "backup2", "last"}; !slices.Equal(all, want) {
		t.Errorf("members %v, want %v", all, want)
	}

	// The best tier going away promotes the next.
	r.Apply(beat("best", 2, started(-9*time.Hour), leaving()), at(time.Minute))
	if got := r.Snapshot().Tier(0); len(got) != 3 || got[0].ID != "b" {
		t.Errorf("tier 0 after best left: %+v", got)
	}
}

func TestSnapshotEmpty(t *testing.T) {
	r, _ := newReg(t, Config{})
	s := r.Snapshot()
	if s == nil || len(s.Routes) != 0 || len(s.Tiers) != 0 {
		t.Fatalf("empty snapshot %+v", s)
	}
	r.Apply(beat("a", 1, draining()), at(0))
	if s := r.Snapshot(); len(s.Routes) != 0 || len(s.Tiers) != 0 {
		t.Fatalf("snapshot with only a draining member %+v", s)
	}
}

func TestPriorityOverride(t *testing.T) {
	r, _ := newReg(t, Config{Priority: map[string]int{"a": 5, "c": -1}})
	r.Apply(beat("a", 1, withPriority(-10)), at(0))
	r.Apply(beat("b", 1, withPriority(1)), at(0))
	r.Apply(beat("c", 1, withPriority(100)), at(0))
	if got, want := routedIDs(settled(t, r)), []string{"c", "b", "a"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if got := r.Snapshot().Tiers; !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("tiers %v", got)
	}
	m, _ := member(t, r, "a")
	if m.Priority != 5 || m.AnnouncedPriority != -10 {
		t.Errorf("a: priority %d announced %d", m.Priority, m.AnnouncedPriority)
	}
	// A new announced priority does not beat the override, nor rebuild.
	s := r.Snapshot()
	r.Apply(beat("a", 2, withPriority(-20)), at(time.Second))
	if r.Snapshot() != s {
		t.Errorf("snapshot rebuilt though the effective priority did not change")
	}
	if m, _ := member(t, r, "a"); m.Priority != 5 || m.AnnouncedPriority != -20 {
		t.Errorf("a: priority %d announced %d", m.Priority, m.AnnouncedPriority)
	}
	// Without override, a priority change reorders.
	r.Apply(beat("b", 2, withPriority(-50)), at(time.Second))
	if got, want := routedIDs(settled(t, r)), []string{"b", "c", "a"}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}

func TestAllowNetworks(t *testing.T) {
	nets := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.168.1.0/24"),
		netip.MustParsePrefix("fd00::/8"),
	}
	tests := []struct {
		url  string
		nets []netip.Prefix
		ok   bool
	}{
		{"http://10.1.2.3:8080", nets, true},
		{"http://10.255.255.255:443/", nets, true},
		{"http://192.168.1.77:80", nets, true},
		{"http://[fd00::1]:8080", nets, true},
		{"http://[::ffff:10.0.0.1]:8080", nets, true}, // IPv4-mapped: judged as IPv4
		{"http://[::ffff:8.8.8.8]:8080", nets, false},
		{"http://192.168.2.1:80", nets, false},
		{"http://11.0.0.1:80", nets, false},
		{"http://127.0.0.1:80", nets, false},
		{"http://169.254.169.254:80", nets, false},
		{"http://[fe80::1]:80", nets, false},
		{"http://[::1]:80", nets, false},
		// DNS names are admitted: the gateway checks the resolved address
		// when it dials.
		{"http://app1.internal:8080", nets, true},
		{"http://localhost:8080", nets, true},
		{"http://10.0.0.1.nip.io:8080", nets, true},
		{"http://app1.internal:8080", nil, true}, // no restriction
		{"http://8.8.8.8:80", nil, true},
		// An IPv4-mapped network in the configuration matches IPv4 urls.
		{"http://10.9.9.9:80", []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}, true},
		{"http://[::ffff:10.9.9.9]:80", []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}, true},
		{"http://11.9.9.9:80", []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}, false},
		// A prefix with host bits set still means its network.
		{"http://10.200.0.1:80", []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			if err := heartbeat.ValidURL(tt.url); err != nil {
				t.Fatalf("test url is invalid: %v", err)
			}
			r, rec := newReg(t, Config{AllowNetworks: tt.nets})
			r.Apply(beat("a", 1, withURL(tt.url)), at(0))
			ev := rec.take()
			_, known := member(t, r, "a")
			if tt.ok {
				if !known || len(ev) != 1 || ev[0].Kind != EventJoin {
					t.Fatalf("rejected: %+v", ev)
				}
				mustRouted(t, r, "a")
				return
			}
			if known || len(settled(t, r).Routes) != 0 {
				t.Fatalf("url outside allow_networks admitted")
			}
			if len(ev) != 1 || ev[0].Kind != EventRejected || ev[0].Reason != "network" || ev[0].ID != "a" {
				t.Fatalf("events %+v, want one rejection for network", ev)
			}
		})
	}
}

func TestAllowNetworksKnownMemberMovingOutside(t *testing.T) {
	r, rec := newReg(t, Config{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	r.Apply(beat("a", 1), at(0))
	rec.take()
	r.Apply(beat("a", 2, withURL("http://1.2.3.4:80")), at(time.Second))
	ev := mustKinds(t, rec, EventRejected)
	if ev[0].Reason != "network" {
		t.Errorf("reason %q", ev[0].Reason)
	}
	if m, _ := member(t, r, "a"); m.URL != "http://10.0.0.1:8080" || m.Seq != 1 {
		t.Errorf("member changed: %+v", m)
	}
	if r.Snapshot().Routes[0].Dial != "10.0.0.1:8080" {
		t.Errorf("routes %+v", r.Snapshot().Routes)
	}
}

func TestMaxInstances(t *testing.T) {
	r, rec := newReg(t, Config{MaxInstances: 3})
	for _, id := range []string{"a", "b", "c"} {
		r.Apply(beat(id, 1), at(0))
	}
	rec.take()
	r.Apply(beat("d", 1), at(time.Second))
	ev := mustKinds(t, rec, EventRejected)
	if ev[0].Reason != "capacity" || ev[0].ID != "d" {
		t.Errorf("rejection %+v", ev[0])
	}
	if len(r.Members()) != 3 {
		t.Fatalf("%d members", len(r.Members()))
	}
	mustRouted(t, r, "a", "b", "c")

	// Known ids still update at capacity.
	r.Apply(beat("a", 2, draining()), at(time.Second))
	mustState(t, r, "a", StateDraining)
	r.Apply(beat("a", 3), at(time.Second))
	rec.take()

	// A left and a stale member can be evicted, the longest-gone first.
	r.Apply(beat("b", 2, leaving()), at(2*time.Second))
	r.Apply(beat("a", 4), at(5*time.Second))
	r.Sweep(at(5 * time.Second)) // c (last seen at 0) turns stale at 5s; b left at 2s
	mustState(t, r, "c", StateStale)
	rec.take()

	r.Apply(beat("d", 1), at(6*time.Second))
	ev = mustKinds(t, rec, EventForget, EventJoin)
	if ev[0].ID != "b" || ev[1].ID != "d" {
		t.Errorf("events %+v, want b forgotten for d", ev)
	}
	r.Apply(beat("e", 1), at(6*time.Second))
	ev = mustKinds(t, rec, EventForget, EventJoin)
	if ev[0].ID != "c" || ev[1].ID != "e" {
		t.Errorf("events %+v, want c forgotten for e", ev)
	}
	r.Apply(beat("f", 1), at(6*time.Second))
	mustKinds(t, rec, EventRejected)
	if n := len(r.Members()); n != 3 {
		t.Fatalf("%d members, want 3", n)
	}
	mustRouted(t, r, "a", "d", "e")

	// A draining member is alive and is not evicted.
	r.Apply(beat("a", 5, draining()), at(6*time.Second))
	r.Apply(beat("g", 1), at(6*time.Second))
	mustKinds(t, rec, EventDraining, EventRejected)
}

func TestObserve(t *testing.T) {
	const prefix = "cx.ha"
	valid := func(id string, seq int64, mods ...mod) []byte {
		b, err := heartbeat.Encode(beat(id, seq, mods...))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	r, rec := newReg(t, Config{})
	if err := r.Observe(prefix+".hb.app1", valid("app1", 1), at(0)); err != nil {
		t.Fatalf("valid heartbeat: %v", err)
	}
	mustKinds(t, rec, EventJoin)
	mustRouted(t, r, "app1")

	// A literal from PROTOCOL.md, with an offset that is not whole hours.
	example := `{"proto":1,"id":"app2","url":"http://10.0.0.11:8080","state":"ready",
	 "started_at":"2026-11-25T21:00:00.5+05:30","seq":42,"interval_ms":1000,
	 "version":"2026.4.1","priority":0,"leader_roles":["email-dispatcher"],
	 "meta":{"license":"ok"},"future_field":{"x":1}}`
	if err := r.Observe(prefix+".hb.app2", []byte(example), at(0)); err != nil {
		t.Fatalf("protocol example: %v", err)
	}
	mustKinds(t, rec, EventJoin)
	m, _ := member(t, r, "app2")
	if m.Seq != 42 || m.Version != "2026.4.1" || !slices.Equal(m.LeaderRoles, []string{"email-dispatcher"}) || m.Meta["license"] != "ok" {
		t.Errorf("member %+v", m)
	}
	snap := settled(t, r)
	members := r.Members()

	big := valid("app1", 2)
	big = append(big[:len(big)-1], []byte(`,"pad":"`+strings.Repeat("x", 10*1024)+`"}`)...)
	tests := []struct {
		name    string
		subject string
		data    []byte
		reason  string
		id      string
	}{
		{"malformed json", prefix + ".hb.app1", []byte(`{"proto":1,"id":"app1",`), "json", "app1"},
		{"not an object", prefix + ".hb.app1", []byte(`[1,2,3]`), "json", "app1"},
		{"empty", prefix + ".hb.app1", nil, "json", "app1"},
		{"id mismatch", prefix + ".hb.app1", valid("app2", 100), "id", "app1"},
		{"url with path", prefix + ".hb.app1", valid("app1", 2, withURL("http://10.0.0.1:8080/api")), "url", "app1"},
		{"url without port", prefix + ".hb.app1", valid("app1", 2, withURL("http://10.0.0.1")), "url", "app1"},
		{"url with user", prefix + ".hb.app1", valid("app1", 2, withURL("http://u:p@10.0.0.1:80")), "url", "app1"},
		{"10 KiB payload", prefix + ".hb.app1", big, "payload", "app1"},
		{"unknown state", prefix + ".hb.app1", valid("app1", 2, withState("sleeping")), "state", "app1"},
		{"seq zero", prefix + ".hb.app1", valid("app1", 0), "seq", "app1"},
		{"interval too short", prefix + ".hb.app1", valid("app1", 2, withInterval(10)), "interval_ms", "app1"},
		{"priority out of range", prefix + ".hb.app1", valid("app1", 2, withPriority(1001)), "priority", "app1"},
		{"bad subject id", prefix + ".hb.app$1", valid("app1", 2), "subject", ""},
		{"other prefix", "other.hb.app1", valid("app1", 2), "subject", ""},
		{"too many tokens", prefix + ".hb.app1.x", valid("app1", 2), "subject", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Observe(tt.subject, tt.data, at(time.Second))
			if err == nil {
				t.Fatal("accepted")
			}
			ev := rec.take()
			if len(ev) != 1 || ev[0].Kind != EventRejected || ev[0].Reason != tt.reason || ev[0].ID != tt.id || ev[0].Detail == "" {
				t.Fatalf("events %+v, want one rejection with reason %q id %q (error %v)", ev, tt.reason, tt.id, err)
			}
			if r.Snapshot() != snap {
				t.Fatal("snapshot changed")
			}
			if got := r.Members(); !membersEqual(got, members) {
				t.Fatalf("members changed:\n%+v\nwant\n%+v", got, members)
			}
		})
	}
}

func membersEqual(a, b []Member) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if !slices.Equal(x.LeaderRoles, y.LeaderRoles) || len(x.Meta) != len(y.Meta) {
			return false
		}
		for k, v := range x.Meta {
			if y.Meta[k] != v {
				return false
			}
		}
		x.LeaderRoles, y.LeaderRoles, x.Meta, y.Meta = nil, nil, nil, nil
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

func TestSnapshotRebuiltOnlyWhenRoutingChanges(t *testing.T) {
	r, _ := newReg(t, Config{})
	seq := int64(0)
	next := func() int64 { seq++; return seq }

	r.Apply(beat("a", next()), at(0))
	s1 := r.Snapshot()
	if s1.Generation == 0 {
		t.Fatal("join did not rebuild")
	}
	type step struct {
		name    string
		msg     func() *heartbeat.Message
		rebuild bool
	}
	steps := []step{
		{"plain heartbeat", func() *heartbeat.Message { return beat("a", next()) }, false},
		{"new meta, roles, interval", func() *heartbeat.Message {
			return beat("a", next(), withMeta("license", "expired"), withRoles("email"), withInterval(500))
		}, false},
		{"duplicate", func() *heartbeat.Message { return beat("a", seq) }, false},
		{"version change", func() *heartbeat.Message { return beat("a", next(), withVersion("v2")) }, true},
		{"same version again", func() *heartbeat.Message { return beat("a", next(), withVersion("v2")) }, false},
		{"priority change", func() *heartbeat.Message { return beat("a", next(), withVersion("v2"), withPriority(3)) }, true},
		{"url change within the process: a conflict", func() *heartbeat.Message {
			return beat("a", next(), withVersion("v2"), withPriority(3), withURL("http://10.0.0.2:8080"))
		}, false},
		{"trailing slash, same dial", func() *heartbeat.Message {
			return beat("a", next(), withVersion("v2"), withPriority(3), withURL("http://10.0.0.1:8080/"))
		}, false},
		{"draining", func() *heartbeat.Message { return beat("a", next(), draining()) }, true},
		{"draining again, other version", func() *heartbeat.Message { return beat("a", next(), draining(), withVersion("v3")) }, false},
		{"draining joiner", func() *heartbeat.Message { return beat("b", 1, draining()) }, false},
		{"ready", func() *heartbeat.Message { return beat("a", next()) }, true},
		{"restart", func() *heartbeat.Message { seq = 0; return beat("a", next(), started(time.Hour)) }, true},
		{"older process", func() *heartbeat.Message { return beat("a", 99) }, false},
	}
	for i, st := range steps {
		before := r.Snapshot()
		r.Apply(st.msg(), at(time.Duration(i+1)*time.Second))
		after := r.Snapshot()
		if rebuilt := after != before; rebuilt != st.rebuild {
			t.Fatalf("%s: rebuilt %v, want %v", st.name, rebuilt, st.rebuild)
		}
		if st.rebuild && after.Generation <= before.Generation {
			t.Fatalf("%s: generation %d after %d", st.name, after.Generation, before.Generation)
		}
	}

	// A sweep that changes nothing, or only non-routed members, rebuilds
	// nothing. b (draining) was last seen at 11s, a at 13s.
	s := r.Snapshot()
	r.Sweep(at(13 * time.Second))
	r.Sweep(at(14 * time.Second))
	mustState(t, r, "b", StateStale)
	mustState(t, r, "a", StateActive)
	if r.Snapshot() != s {
		t.Fatal("sweep rebuilt though routing did not change")
	}
	r.Sweep(at(16 * time.Second))
	mustState(t, r, "a", StateStale)
	if r.Snapshot() == s || len(r.Snapshot().Routes) != 0 {
		t.Fatal("a turning stale did not rebuild")
	}
}

func TestSnapshotNotRebuiltForFractionalOffsets(t *testing.T) {
	// time.Parse gives every +05:30 time its own *time.Location; the
	// registry must compare instants, not representations.
	r, _ := newReg(t, Config{})
	for i, offset := range []string{"+05:30", "+05:45", "-09:30", "+01:00", "Z"} {
		id := "a" + string(rune('0'+i))
		subject := "cx.ha.hb." + id
		payload := func(seq int) []byte {
			return []byte(`{"proto":1,"id":"` + id + `","url":"http://10.0.0.1:8080","state":"ready",` +
				`"started_at":"2026-11-25T21:00:00.25` + offset + `","seq":` + string(rune('0'+seq)) + `,"interval_ms":1000}`)
		}
		if err := r.Observe(subject, payload(1), at(0)); err != nil {
			t.Fatal(err)
		}
		s := r.Snapshot()
		for seq := 2; seq <= 5; seq++ {
			if err := r.Observe(subject, payload(seq), at(time.Duration(seq)*time.Second)); err != nil {
				t.Fatal(err)
			}
			if r.Snapshot() != s {
				t.Fatalf("offset %s: a plain heartbeat rebuilt the snapshot", offset)
			}
		}
	}
	// The same instant written with another offset is the same process.
	r2, rec := newReg(t, Config{})
	mk := func(started string, seq int) []byte {
		return []byte(`{"proto":1,"id":"a","url":"http://10.0.0.1:8080","state":"ready","started_at":"` + started +
			`","seq":` + string(rune('0'+seq)) + `,"interval_ms":1000}`)
	}
	_ = r2.Observe("cx.ha.hb.a", mk("2026-11-25T21:00:00Z", 1), at(0))
	s := r2.Snapshot()
	_ = r2.Observe("cx.ha.hb.a", mk("2026-11-26T02:30:00+05:30", 2), at(time.Second))
	mustKinds(t, rec, EventJoin)
	if r2.Snapshot() != s {
		t.Fatal("same instant in another offset rebuilt the snapshot")
	}
}

func TestMembersReturnsCopies(t *testing.T) {
	r, _ := newReg(t, Config{})
	msg := beat("a", 1, withRoles("email", "reports"), withMeta("license", "ok"))
	r.Apply(msg, at(0))
	// The caller's message is not kept either.
	msg.LeaderRoles[0] = "changed"
	msg.Meta["license"] = "changed"

	ms := r.Members()
	ms[0].State = StateLeft
	ms[0].URL = "http://evil:1"
	ms[0].LeaderRoles[1] = "changed"
	ms[0].Meta["license"] = "changed"
	ms[0].Meta["new"] = "x"

	m, _ := member(t, r, "a")
	if m.State != StateActive || m.URL != "http://10.0.0.1:8080" {
		t.Errorf("member changed through a copy: %+v", m)
	}
	if !slices.Equal(m.LeaderRoles, []string{"email", "reports"}) {
		t.Errorf("leader roles %v", m.LeaderRoles)
	}
	if len(m.Meta) != 1 || m.Meta["license"] != "ok" {
		t.Errorf("meta %v", m.Meta)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"prefix", Config{Prefix: "my.app"}, true},
		{"prefix wildcard", Config{Prefix: "cx.*"}, false},
		{"prefix empty token", Config{Prefix: "cx..ha"}, false},
		{"negative stale_after", Config{StaleAfter: -time.Second}, false},
		{"negative forget_after", Config{ForgetAfter: -time.Second}, false},
		{"negative max_instances", Config{MaxInstances: -1}, false},
		{"invalid network", Config{AllowNetworks: []netip.Prefix{{}}}, false},
		{"priority override", Config{Priority: map[string]int{"app1": -1000}}, true},
		{"priority override bad id", Config{Priority: map[string]int{"app.1": 0}}, false},
		{"priority override out of range", Config{Priority: map[string]int{"app1": 1001}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("New: %v, want ok %v", err, tt.ok)
			}
			if err != nil {
				return
			}
			c := r.Config()
			if c.Prefix == "" || c.ForgetAfter <= 0 || c.MaxInstances <= 0 {
				t.Errorf("defaults not applied: %+v", c)
			}
		})
	}
	r, _ := New(Config{})
	if c := r.Config(); c.Prefix != heartbeat.DefaultPrefix || c.ForgetAfter != DefaultForgetAfter || c.MaxInstances != DefaultMaxInstances {
		t.Errorf("defaults %+v", c)
	}
}

func TestObservePrefix(t *testing.T) {
	r, rec := newReg(t, Config{Prefix: "shop.prod"})
	b, _ := json.Marshal(beat("a", 1))
	if err := r.Observe("cx.ha.hb.a", b, at(0)); err == nil {
		t.Fatal("default prefix accepted by a registry of another prefix")
	}
	rec.take()
	if err := r.Observe("shop.prod.hb.a", b, at(0)); err != nil {
		t.Fatal(err)
	}
	mustKinds(t, rec, EventJoin)
}

func TestEventsOutsideLock(t *testing.T) {
	// OnEvent may call back into the registry without deadlocking.
	var r *Registry
	calls := 0
	r, err := New(Config{OnEvent: func(Event) {
		calls++
		_ = r.Members()
		_ = r.Frozen()
		_ = r.Snapshot()
	}})
	if err != nil {
		t.Fatal(err)
	}
	r.Apply(beat("a", 1), at(0))
	r.Sweep(at(time.Minute))
	r.Sweep(at(time.Hour))
	_ = r.Observe("cx.ha.hb.a", []byte("nope"), at(time.Hour))
	if calls != 4 { // join, stale, forget, rejected
		t.Fatalf("%d events", calls)
	}
}

func TestClosedRegistryReportsNothing(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Close()
	r.Apply(beat("a", 1), at(0))
	if ev := rec.take(); len(ev) != 0 {
		t.Fatalf("a closed registry reported %+v", ev)
	}
}
