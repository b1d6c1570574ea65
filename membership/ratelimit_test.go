package membership

import (
	"fmt"
	"testing"
	"time"
)

func TestHeartbeatRateLimitPerInstance(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 1), at(0))
	gen := r.Snapshot().Generation
	// A publisher flapping draining/ready as fast as it can: the burst
	// passes, the rest is rejected, the snapshot stops being rebuilt.
	for seq := int64(2); seq < 1000; seq++ {
		mod := ready()
		if seq%2 == 0 {
			mod = draining()
		}
		r.Apply(beat("a", seq, mod), at(time.Duration(seq)*time.Microsecond))
	}
	rejected := 0
	for _, ev := range rec.take() {
		if ev.Kind == EventRejected {
			if ev.Reason != "rate" {
				t.Fatalf("rejection %+v, want reason rate", ev)
			}
			rejected++
		}
	}
	if rebuilds := r.Snapshot().Generation - gen; rebuilds > RateBurst {
		t.Fatalf("%d snapshot rebuilds from a flood, want at most the burst %d", rebuilds, RateBurst)
	}
	// The admitting heartbeat is not charged: the flood has the whole
	// burst, and over its 1ms RateFloor per second refills no whole token.
	if want := 998 - RateBurst; rejected != want {
		t.Fatalf("%d of 998 flood messages rejected, want %d (all but the rest of the burst)", rejected, want)
	}
	// A normal heartbeat a second later is accepted again.
	r.Apply(beat("a", 2000), at(time.Second))
	mustState(t, r, "a", StateActive)
	if ev := rec.take(); len(ev) > 0 && ev[len(ev)-1].Kind == EventRejected {
		t.Fatalf("heartbeat after the flood rejected: %+v", ev)
	}
}

func TestNormalRateIsNeverLimited(t *testing.T) {
	r, rec := newReg(t, Config{})
	// 100ms interval (the fastest allowed), plus a discover answer and a
	// state change every second, for a minute.
	seq := int64(0)
	for ms := 0; ms < 60000; ms += 100 {
		seq++
		r.Apply(beat("a", seq, withInterval(100)), at(time.Duration(ms)*time.Millisecond))
		if ms%1000 == 0 {
			seq++
			r.Apply(beat("a", seq, withInterval(100), draining()), at(time.Duration(ms)*time.Millisecond))
			seq++
			r.Apply(beat("a", seq, withInterval(100)), at(time.Duration(ms)*time.Millisecond))
		}
	}
	for _, ev := range rec.take() {
		if ev.Kind == EventRejected {
			t.Fatalf("a well-behaved instance was limited: %+v", ev)
		}
	}
}

func TestFloodOfNewIDsIsBounded(t *testing.T) {
	r, rec := newReg(t, Config{MaxInstances: 1000})
	start := time.Now()
	for i := range 100000 {
		r.Apply(beat(fmt.Sprintf("fake-%d", i), 1), at(time.Duration(i)*time.Microsecond))
	}
	t.Logf("100,000 new ids applied in %v", time.Since(start))
	if n := len(r.Members()); n != 1000 {
		t.Fatalf("%d members, want the bound 1000", n)
	}
	capacity := 0
	for _, ev := range rec.take() {
		if ev.Kind == EventRejected && ev.Reason == "capacity" {
			capacity++
		}
	}
	if capacity != 99000 {
		t.Fatalf("%d capacity rejections, want 99000", capacity)
	}
}
