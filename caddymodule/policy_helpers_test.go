package caddymodule

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-cx/caddy-cx/membership"
)

// routesOf makes a fake snapshot: tiers gives the size of each priority
// tier; instance i is "iN" at 127.0.0.1:(1000+N), routed since since(N).
func routesOf(since func(n int) time.Time, tiers ...int) *membership.Snapshot {
	snap := &membership.Snapshot{}
	n := 0
	for prio, size := range tiers {
		for range size {
			snap.Routes = append(snap.Routes, membership.Route{ID: fmt.Sprintf("i%d", n),
				Dial: fmt.Sprintf("127.0.0.1:%d", 1000+n), Priority: prio, ActiveSince: since(n)})
			n++
		}
		snap.Tiers = append(snap.Tiers, n)
	}
	return snap
}

func idsOf(routes []membership.Route) []string {
	var ids []string
	for _, r := range routes {
		ids = append(ids, r.ID)
	}
	return ids
}

var epoch = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

func always(int) time.Time { return epoch }

func TestCandidatesWholeTiersThenRotatingWindow(t *testing.T) {
	small := routesOf(always, 3, 2)
	if routes, tiers := candidates(small, 7); len(routes) != 5 || !slices.Equal(tiers, []int{3, 5}) {
		t.Fatalf("a small fleet is handed over whole: %d routes, tiers %v", len(routes), tiers)
	}
	big := routesOf(always, 10, 20)
	routes, tiers := candidates(big, 0)
	if len(routes) != MaxCandidates || !slices.Equal(tiers, []int{10, MaxCandidates}) {
		t.Fatalf("%d routes, tiers %v; want the first tier whole and a window of 6 of the second", len(routes), tiers)
	}
	if got := idsOf(routes[10:]); !slices.Equal(got, []string{"i10", "i11", "i12", "i13", "i14", "i15"}) {
		t.Fatalf("window at turn 0: %v", got)
	}
	routes, _ = candidates(big, 18)
	if got := idsOf(routes[10:]); !slices.Equal(got, []string{"i28", "i29", "i10", "i11", "i12", "i13"}) {
		t.Fatalf("window at turn 18 wraps around the tier: %v", got)
	}
	huge := routesOf(always, 40)
	routes, tiers = candidates(huge, 41)
	if len(routes) != MaxCandidates || !slices.Equal(tiers, []int{MaxCandidates}) || routes[0].ID != "i1" {
		t.Fatalf("one huge tier: %v, tiers %v; want 16 from i1", idsOf(routes), tiers)
	}
}

func TestDelayFailbackMovesYoungRoutesBehind(t *testing.T) {
	now := epoch.Add(time.Hour)
	young := map[int]bool{0: true, 3: true}
	since := func(n int) time.Time {
		if young[n] {
			return now.Add(-time.Second)
		}
		return epoch
	}
	snap := routesOf(since, 2, 2) // tier 0: i0 (young) i1; tier 1: i2 i3 (young)
	routes, tiers := delayFailback(snap.Routes, snap.Tiers, now, 30*time.Second)
	if got := idsOf(routes); !slices.Equal(got, []string{"i1", "i2", "i0", "i3"}) || !slices.Equal(tiers, []int{1, 2, 3, 4}) {
		t.Fatalf("order %v tiers %v; want the settled tiers first, then the young ones, tiers kept", got, tiers)
	}
	routes, _ = delayFailback(snap.Routes, snap.Tiers, now.Add(time.Minute), 30*time.Second)
	if got := idsOf(routes); !slices.Equal(got, []string{"i0", "i1", "i2", "i3"}) {
		t.Fatalf("after the delay: %v, want the snapshot's order", got)
	}
	allYoung := routesOf(func(int) time.Time { return now }, 1, 1)
	routes, tiers = delayFailback(allYoung.Routes, allYoung.Tiers, now, time.Minute)
	if got := idsOf(routes); !slices.Equal(got, []string{"i0", "i1"}) || !slices.Equal(tiers, []int{1, 2}) {
		t.Fatalf("all young (a gateway that just started): %v %v, want unchanged", got, tiers)
	}
}

func TestRampOfSlowStart(t *testing.T) {
	now := epoch.Add(time.Hour)
	ages := []time.Duration{time.Hour, 5 * time.Second, 0}
	snap := routesOf(func(n int) time.Time { return now.Add(-ages[n]) }, 3)
	c := &candidatePool{routes: snap.Routes, tiers: snap.Tiers, now: now, slowStart: 10 * time.Second}
	w := c.rampOf(0)
	if w == nil {
		t.Fatal("no ramp while an instance is ramping")
	}
	for i, want := range []float64{1, 0.5, slowStartFloor} {
		if got := w(i); got != want {
			t.Errorf("weight of an instance routed %v ago = %v, want %v", ages[i], got, want)
		}
	}
	c.now = now.Add(time.Minute)
	if c.rampOf(0) != nil {
		t.Fatal("a ramp after every instance ramped up")
	}
	c.slowStart = 0
	c.now = now
	if c.rampOf(0) != nil {
		t.Fatal("a ramp with slow_start off")
	}
}

func TestPreferredTier(t *testing.T) {
	tiers := []int{2, 5, 6}
	usable := func(ok ...int) func(int) bool { return func(i int) bool { return slices.Contains(ok, i) } }
	for _, tc := range []struct {
		ok         []int
		start, end int
		found      bool
		name       string
	}{
		{[]int{0, 4}, 0, 2, true, "the best tier"},
		{[]int{3}, 2, 5, true, "the second tier"},
		{[]int{5}, 5, 6, true, "the last tier"},
		{nil, 0, 0, false, "none"},
	} {
		start, end, found := preferredTier(tiers, usable(tc.ok...))
		if start != tc.start || end != tc.end || found != tc.found {
			t.Errorf("%s: %d..%d %v, want %d..%d %v", tc.name, start, end, found, tc.start, tc.end, tc.found)
		}
	}
}

// TestPolicyJudgesRecordedOutcomes: when asked for another instance, the
// policy marks the previous instance failing only for the outcomes nginx
// counts, and never sends a request to the same instance twice.
func TestPolicyJudgesRecordedOutcomes(t *testing.T) {
	for _, tc := range []struct {
		outcome string
		status  int
		failing bool
	}{
		{outcomeDial, 0, true},
		{outcomeStale, 0, true},
		{outcomeError, 0, true},
		{outcomeStatus5x, http.StatusBadGateway, true},
		{outcomeStatus5x, http.StatusServiceUnavailable, true},
		{outcomeStatus5x, http.StatusGatewayTimeout, true},
		{outcomeStatus5x, http.StatusInternalServerError, false}, // retried only by a custom lb_retry_match
		{outcomeBodySpent, 0, false},
		{"", 0, true}, // no cx transport: asked again means the try failed
	} {
		name := fmt.Sprintf("%s %d", tc.outcome, tc.status)
		now := epoch.Add(time.Hour)
		svc := &Service{health: newPassiveHealth(time.Minute)}
		snap := routesOf(always, 1, 1)
		u := &Upstreams{service: svc}
		r := proxied("GET")
		st := requestOf(r)
		st.setPool(u.poolOf(snap, now, nil))
		p := &Failover{}
		first := p.Select(st.pool().ups, r, nil)
		if first == nil || first.Dial != "127.0.0.1:1000" {
			t.Fatalf("%s: first pick %v, want the primary", name, first)
		}
		st.ended(first.Dial, "i0", tc.outcome, tc.status)
		st.setPool(u.poolOf(snap, now, nil))
		second := p.Select(st.pool().ups, r, nil)
		if second == nil || second.Dial != "127.0.0.1:1001" {
			t.Fatalf("%s: retry picked %v, want the backup (never the same instance twice)", name, second)
		}
		if got := svc.health.failing(first.Dial, now); got != tc.failing {
			t.Errorf("%s: primary failing %v, want %v", name, got, tc.failing)
		}
		if len(st.tries) != 2 || st.tries[0].outcome != tc.outcome || st.judged != 1 {
			t.Errorf("%s: tries %+v judged %d", name, st.tries, st.judged)
		}
		if p.Select(st.pool().ups, r, nil) != nil {
			t.Errorf("%s: a third pick with every instance tried", name)
		}
	}
}

// TestRequestWithoutBodyAllocatesOneState: the state is one allocation
// with room for two tries, whatever module creates it.
func TestRequestWithoutBodyAllocatesOneState(t *testing.T) {
	snap := routesOf(always, 1, 1)
	u := &Upstreams{service: &Service{health: newPassiveHealth(time.Minute)}}
	c := u.poolOf(snap, epoch, nil)
	p := &Failover{}
	r := proxied("GET")
	vars := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	allocs := testing.AllocsPerRun(100, func() {
		delete(vars, varRequest)
		requestOf(r).setPool(c)
		if p.Select(c.ups, r, nil) == nil {
			t.Fatal("no pick")
		}
		requestIn(r.Context()).ended("127.0.0.1:1000", "i0", outcomeOK, 200)
	})
	if allocs > 1 {
		t.Fatalf("%v allocations per request for the state, selection and outcome; want 1", allocs)
	}
}

func TestLoopGuard(t *testing.T) {
	g := newLoopGuard(nil, "127.0.0.1:2019", ":4222", "localhost:8443")
	for _, tc := range []struct {
		url  string
		loop bool
	}{
		{"http://127.0.0.1:2019", true},
		{"http://127.0.0.1:2020", false},
		{"http://127.0.0.5:4222", true}, // a port listened on every address
		{"http://localhost:2019", true}, // a name of this machine, not resolved by DNS
		{"http://localhost:8443", true},
		{"http://127.0.0.1:8443", true},
		{"http://[::1]:4222", true},
		{"http://0.0.0.0:9999", true}, // unspecified: this machine, whatever the port
		{"http://example.invalid:2019", false},
	} {
		if got := g.deny(tc.url) != ""; got != tc.loop {
			t.Errorf("deny(%s) = %v, want %v", tc.url, got, tc.loop)
		}
	}
	if !g.owns(netip.MustParseAddr("::ffff:127.0.0.1"), 2019) {
		t.Error("a v4-mapped address of a listener is owned")
	}
	if g.owns(netip.MustParseAddr("127.0.0.1"), 2020) {
		t.Error("a port nobody listens on is not owned")
	}
	var none *loopGuard
	if none.owns(netip.MustParseAddr("127.0.0.1"), 2019) || none.deny("http://127.0.0.1:2019") != "" {
		t.Error("before any config a guard knows no listener")
	}
	if none.deny("http://[::]:80") == "" {
		t.Error("an unspecified address is refused even before any config")
	}
}
