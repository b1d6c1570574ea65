package membership

import (
	"fmt"
	"testing"
	"time"
)

// gatewayRebuildEvery is what the gateway runs the registry with
// (caddymodule.RebuildEvery): snapshot rebuilds coalesced, some of them
// published later by a timer.
const gatewayRebuildEvery = 50 * time.Millisecond

// tablesRebuildEvery is the RebuildEvery newReg gives a registry whose
// config leaves it 0: 0 (rebuild at once) unless a test below runs the
// tables again the gateway's way.
var tablesRebuildEvery time.Duration

// settled returns the registry's snapshot once a coalesced rebuild that is
// still pending has been published.
func settled(t testing.TB, r *Registry) *Snapshot {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		r.mu.Lock()
		pending := r.rebuildPending
		r.mu.Unlock()
		if !pending {
			return r.Snapshot()
		}
		if time.Now().After(deadline) {
			t.Fatal("a coalesced rebuild still pending after 2s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestTablesWithCoalescedRebuilds runs the registry's table tests again with
// the RebuildEvery the gateway uses: every routing expectation must hold
// once the coalesced rebuild is published.
func TestTablesWithCoalescedRebuilds(t *testing.T) {
	tablesRebuildEvery = gatewayRebuildEvery
	t.Cleanup(func() { tablesRebuildEvery = 0 })
	for name, run := range map[string]func(*testing.T){
		"StateTransitions": TestStateTransitions,
		"Restart":          TestRestart,
		"IDConflict":       TestIDConflict,
		"Staleness":        TestStaleness,
		"ForgetAfter":      TestForgetAfter,
		"AllowNetworks":    TestAllowNetworks,
		"Observe":          TestObserve,
		"AllowIDs":         TestAllowIDs,
		"Scheme":           TestScheme,
		"ClockRejections":  TestClockRejections,
		"ForgedLeaving":    TestForgedLeavingChangesNothing,
		"StrayMessages":    TestStrayMessagesDoNotStarveTheKnownProcess,
		"RealSeqGaps":      TestRealSeqGapsAreAccepted,
	} {
		t.Run(name, run)
	}
}

// A burst of routing changes is folded into fewer rebuilds, and the last
// change is published by the timer with no further message.
func TestCoalescedRebuildPublishesTheLastChange(t *testing.T) {
	r, _ := newReg(t, Config{RebuildEvery: gatewayRebuildEvery})
	gen := r.Snapshot().Generation
	const n = 200
	for i := range n {
		r.Apply(beat(fmt.Sprintf("i%03d", i), 1), at(0))
	}
	s := settled(t, r)
	if len(s.Routes) != n {
		t.Fatalf("%d routes once settled, want %d", len(s.Routes), n)
	}
	if rebuilds := s.Generation - gen; rebuilds >= n {
		t.Fatalf("%d rebuilds for %d joins in a burst: not coalesced", rebuilds, n)
	}
	// The one that leaves last is gone from the snapshot without any
	// later message or sweep.
	r.Apply(beat("i000", 2, leaving()), at(time.Second))
	if got := settled(t, r); len(got.Routes) != n-1 || got.Routes[0].ID == "i000" {
		t.Fatalf("after i000 left: %d routes, first %s", len(got.Routes), got.Routes[0].ID)
	}
}
