package membership

import (
	"sync/atomic"
	"testing"
	"time"
)

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
