package membership

import (
	"testing"
	"time"
)

// A leaving is accepted only from the known process: one from a newer
// started_at may be forged (a single message would evict the instance), so
// it changes nothing; the known process leaves by itself or turns stale.
func TestLeavingFromANewerProcessChangesNothing(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 7), at(0))
	rec.take()
	r.Apply(beat("a", 1, started(time.Hour), leaving()), at(time.Second))
	mustState(t, r, "a", StateActive)
	mustRouted(t, r, "a")
	mustKinds(t, rec)
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

func TestFailedProbeAfterAFreshHeartbeatKeepsTheMember(t *testing.T) {
	probing := make(chan struct{})
	answer := make(chan bool)
	r, _ := newReg(t, Config{Confirm: func(string) bool { close(probing); return <-answer }})
	r.Apply(beat("a", 1), at(0))
	r.Sweep(at(4 * time.Second))
	<-probing
	r.Apply(beat("a", 2), at(4*time.Second+time.Millisecond))
	answer <- false
	waitFor(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return !r.members["a"].probing
	})
	mustState(t, r, "a", StateActive)
	mustRouted(t, r, "a")
}

func TestRestartIsRoutedAsNew(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("a", 1), at(0))
	r.Apply(beat("a", 1, started(time.Hour)), at(time.Minute))
	if m, _ := member(t, r, "a"); !m.ActiveSince.Equal(at(time.Minute)) {
		t.Fatalf("ActiveSince %v after a restart at %v", m.ActiveSince, at(time.Minute))
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
