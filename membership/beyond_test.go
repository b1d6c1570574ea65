package membership

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

func TestRiseNeedsConsecutiveHeartbeats(t *testing.T) {
	r, _ := newReg(t, Config{Rise: 3})
	r.Apply(beat("a", 1), at(0))
	r.Apply(beat("a", 2), at(time.Second))
	mustRouted(t, r)
	if m, _ := member(t, r, "a"); !m.Held || m.State != StateActive {
		t.Fatalf("before rising: %+v, want active and held", m)
	}
	r.Apply(beat("a", 3), at(2*time.Second))
	mustRouted(t, r, "a")

	// Back from stale it has to rise again.
	r.Sweep(at(10 * time.Second))
	mustState(t, r, "a", StateStale)
	r.Apply(beat("a", 4), at(11*time.Second))
	r.Apply(beat("a", 5), at(12*time.Second))
	mustRouted(t, r)
	r.Apply(beat("a", 6), at(13*time.Second))
	mustRouted(t, r, "a")

	// A restart starts over too.
	r.Apply(beat("a", 1, started(time.Hour)), at(14*time.Second))
	mustRouted(t, r)
}

func TestFlappingInstanceIsHeldOutWithGrowingHolds(t *testing.T) {
	r, rec := newReg(t, Config{FlapLimit: 3, FlapWindow: 10 * time.Second, FlapHold: 2 * time.Second})
	seq := int64(0)
	flap := func(from time.Duration) time.Duration {
		// ready/draining every 300ms: four exits from active in 2.4s
		d := from
		for range 4 {
			seq++
			r.Apply(beat("a", seq), at(d))
			d += 300 * time.Millisecond
			seq++
			r.Apply(beat("a", seq, draining()), at(d))
			d += 300 * time.Millisecond
		}
		return d
	}
	end := flap(0)
	flapping := 0
	for _, ev := range rec.take() {
		if ev.Kind == EventFlapping {
			flapping++
		}
	}
	if flapping != 1 {
		t.Fatalf("%d flapping events, want 1", flapping)
	}
	seq++
	r.Apply(beat("a", seq), at(end))
	mustRouted(t, r) // ready, but held
	m, _ := member(t, r, "a")
	if hold := m.HeldUntil.Sub(at(end - 300*time.Millisecond)); hold != 2*time.Second {
		t.Fatalf("first hold %v, want 2s", hold)
	}
	r.Sweep(m.HeldUntil.Add(time.Millisecond))
	mustRouted(t, r, "a")

	// Flapping again soon after: the hold doubles.
	end = flap(m.HeldUntil.Sub(t0) + time.Second)
	m, _ = member(t, r, "a")
	if hold := m.HeldUntil.Sub(at(end - 300*time.Millisecond)); hold != 4*time.Second {
		t.Fatalf("second hold %v, want 4s", hold)
	}
}

func TestConsistentVersionsSwitchOnceDuringRollingDeploy(t *testing.T) {
	r, rec := newReg(t, Config{ConsistentVersions: true})
	ids := []string{"a", "b", "c"}
	seq := map[string]int64{}
	send := func(id, version string, mods ...mod) {
		seq[id]++
		r.Apply(beat(id, seq[id], append(mods, withVersion(version))...), at(time.Duration(len(seq))*time.Second))
	}
	for _, id := range ids {
		send(id, "2026.9.1")
	}
	served := []string{r.Snapshot().Version}
	observe := func() {
		if v := r.Snapshot().Version; v != served[len(served)-1] {
			served = append(served, v)
		}
		for _, route := range r.Snapshot().Routes {
			if route.Version != r.Snapshot().Version {
				t.Fatalf("route %+v does not have the served version %s", route, r.Snapshot().Version)
			}
		}
	}
	// Roll: each instance leaves and comes back with the new version.
	for i, id := range ids {
		send(id, "2026.9.1", leaving())
		observe()
		seq[id] = 0
		r.Apply(beat(id, 1, withVersion("2026.10.0"), started(time.Duration(i+1)*time.Hour)), at(time.Hour))
		seq[id] = 1
		observe()
	}
	if len(served) != 2 || served[0] != "2026.9.1" || served[1] != "2026.10.0" {
		t.Fatalf("served versions %v, want one switch from 2026.9.1 to 2026.10.0", served)
	}
	switches := 0
	for _, ev := range rec.take() {
		if ev.Kind == EventVersionSwitch {
			switches++
		}
	}
	if switches != 1 {
		t.Fatalf("%d version_switch events, want 1", switches)
	}
}

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"2026.10.0", "2026.9.1", 1},
		{"1.2", "1.2", 0},
		{"1.2", "1.2.1", -1},
		{"v2", "v10", -1},
		{"abc", "abd", -1},
		{"", "1", -1},
	}
	for _, c := range cases {
		if got := compareVersions(c.a, c.b); got != c.want {
			t.Errorf("compare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestLeaderRoleConflicts(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 1, withRoles("email-dispatcher")), at(0))
	r.Apply(beat("b", 1, withURL("http://10.0.0.2:8080")), at(0))
	if c := r.RoleConflicts(); len(c) != 0 {
		t.Fatalf("conflicts %+v with one holder", c)
	}
	rec.take()
	// b claims the role too; it does not change routing, yet is noticed.
	r.Apply(beat("b", 2, withURL("http://10.0.0.2:8080"), withRoles("email-dispatcher")), at(time.Second))
	c := r.RoleConflicts()
	if len(c) != 1 || c[0].Role != "email-dispatcher" || len(c[0].IDs) != 2 {
		t.Fatalf("conflicts %+v", c)
	}
	mustKinds(t, rec, EventRoleConflict)
	r.Apply(beat("a", 2, leaving()), at(2*time.Second))
	if c := r.RoleConflicts(); len(c) != 0 {
		t.Fatalf("conflict %+v should end when one holder leaves", c)
	}
	mustKinds(t, rec, EventLeave, EventRoleResolved)
}

func TestConfirmKeepsAnsweringInstanceRouted(t *testing.T) {
	var answering atomic.Bool
	answering.Store(true)
	probed := make(chan string, 10)
	r, rec := newReg(t, Config{Confirm: func(url string) bool {
		probed <- url
		return answering.Load()
	}})
	r.Apply(beat("a", 1), at(0))
	rec.take()
	r.Sweep(at(4 * time.Second)) // silent past stale_after: probe, stay routed meanwhile
	mustRouted(t, r, "a")
	<-probed
	var got []Event
	waitFor(t, func() bool { got = append(got, rec.take()...); return len(got) > 0 })
	if len(got) != 1 || got[0].Kind != EventAliveUnheard {
		t.Fatalf("events %+v, want alive_unheard", got)
	}
	mustState(t, r, "a", StateActive)

	answering.Store(false)
	r.Sweep(time.Now().Add(10 * time.Second))
	<-probed
	waitFor(t, func() bool {
		m, _ := member(t, r, "a")
		return m.State == StateStale
	})
	mustRouted(t, r)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if func() bool { return cond() }() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

var _ = heartbeat.StateReady
