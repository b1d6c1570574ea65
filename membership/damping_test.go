package membership

import (
	"testing"
	"time"
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

func TestFlapHoldEndsWhileFrozen(t *testing.T) {
	r, _ := newReg(t, Config{FlapLimit: 1, FlapWindow: time.Minute, FlapHold: time.Second})
	seq := int64(0)
	for i := range 2 {
		seq++
		r.Apply(beat("a", seq), at(time.Duration(i)*100*time.Millisecond))
		seq++
		r.Apply(beat("a", seq, draining()), at(time.Duration(i)*100*time.Millisecond+50*time.Millisecond))
	}
	seq++
	r.Apply(beat("a", seq), at(300*time.Millisecond))
	mustRouted(t, r) // held
	r.Freeze()
	r.Sweep(at(5 * time.Second))
	mustRouted(t, r, "a")
	mustState(t, r, "a", StateActive) // and nobody turned stale while frozen
}

func TestRestartIsRoutedAsNew(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("a", 1), at(0))
	r.Apply(beat("a", 1, started(time.Hour)), at(time.Minute))
	if m, _ := member(t, r, "a"); !m.ActiveSince.Equal(at(time.Minute)) {
		t.Fatalf("ActiveSince %v after a restart at %v", m.ActiveSince, at(time.Minute))
	}
}
