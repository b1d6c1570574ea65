package membership

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// TestReconfigure: a reload's new settings apply to the live registry.
// Members are kept without a join (nothing is announced again), those the
// new rules refuse are dropped with a forget that says why, and the
// snapshot shows the new settings at once.
func TestReconfigure(t *testing.T) {
	type drop struct{ id, reason string }
	tests := []struct {
		name   string
		before Config
		beats  []mod2
		after  Config
		routed []string
		drops  []drop
		check  func(t *testing.T, r *Registry)
	}{
		{name: "same settings keep everything",
			beats:  []mod2{{"a", nil}, {"b", []mod{withPriority(1)}}},
			routed: []string{"a", "b"}},
		{name: "allow_ids narrowed drops the others",
			beats:  []mod2{{"app-1", nil}, {"web-1", nil}},
			after:  Config{AllowIDs: []string{"app-*"}},
			routed: []string{"app-1"}, drops: []drop{{"web-1", "id"}}},
		{name: "allow_networks narrowed drops urls outside",
			beats:  []mod2{{"a", nil}, {"b", []mod{withURL("http://192.168.1.5:80")}}},
			after:  Config{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
			routed: []string{"a"}, drops: []drop{{"b", "network"}}},
		{name: "scheme https drops http members",
			beats: []mod2{{"a", nil}}, after: Config{Scheme: "https"},
			routed: []string{}, drops: []drop{{"a", "scheme"}}},
		{name: "clock_skew narrowed drops a started_at too far ahead",
			beats: []mod2{{"a", nil}, {"ahead", []mod{withStart(at(50 * time.Second))}}},
			after: Config{ClockSkew: 10 * time.Second}, routed: []string{"a"}, drops: []drop{{"ahead", "clock"}}},
		{name: "Deny now refuses a url",
			beats: []mod2{{"a", nil}, {"loop", []mod{withURL("http://10.0.0.9:80")}}},
			after: Config{Deny: func(u string) string {
				if strings.Contains(u, "10.0.0.9") {
					return "the gateway itself"
				}
				return ""
			}},
			routed: []string{"a"}, drops: []drop{{"loop", "loop"}}},
		{name: "priority override reorders",
			beats:  []mod2{{"a", nil}, {"b", []mod{withPriority(5)}}},
			after:  Config{Priority: map[string]int{"b": -1}},
			routed: []string{"b", "a"}},
		{name: "priority_range clamps announced priorities",
			beats:  []mod2{{"a", []mod{withPriority(3)}}, {"boss", []mod{withPriority(-100)}}},
			after:  Config{PriorityRange: &PriorityRange{Min: 0, Max: 10}},
			routed: []string{"boss", "a"},
			check: func(t *testing.T, r *Registry) {
				if m, _ := member(t, r, "boss"); m.Priority != 0 || m.AnnouncedPriority != -100 {
					t.Errorf("boss priority %d (announced %d), want clamped to 0", m.Priority, m.AnnouncedPriority)
				}
			}},
		{name: "stale_after applies to kept members",
			beats: []mod2{{"a", nil}}, after: Config{StaleAfter: 10 * time.Second}, routed: []string{"a"},
			check: func(t *testing.T, r *Registry) {
				if m, _ := member(t, r, "a"); m.StaleAfter != 10*time.Second {
					t.Fatalf("stale_after %v, want 10s", m.StaleAfter)
				}
				r.Sweep(at(9 * time.Second))
				mustState(t, r, "a", StateActive)
				r.Sweep(at(11 * time.Second))
				mustState(t, r, "a", StateStale)
			}},
		{name: "a higher rise does not unroute routed members",
			beats: []mod2{{"a", nil}}, after: Config{Rise: 3}, routed: []string{"a"}},
		{name: "a lower rise routes a member still rising",
			before: Config{Rise: 3}, beats: []mod2{{"a", nil}}, after: Config{Rise: 1}, routed: []string{"a"}},
		{name: "consistent versions routes one version",
			beats: []mod2{{"a", []mod{withVersion("1")}}, {"b", []mod{withVersion("2")}}},
			after: Config{ConsistentVersions: true}, routed: []string{"b"}},
		{name: "lower max_instances forgets stale members, keeps live ones",
			beats: []mod2{{"a", nil}, {"b", nil}, {"c", nil}, {"c", []mod{leaving()}}},
			after: Config{MaxInstances: 1}, routed: []string{"a", "b"}, drops: []drop{{"c", "capacity"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, tt.before)
			for i, b := range tt.beats {
				r.Apply(beat(b.id, int64(i+1), b.mods...), at(0))
			}
			rec.take()
			if err := r.reconfigure(tt.after, at(time.Second)); err != nil {
				t.Fatal(err)
			}
			var got []drop
			for _, ev := range rec.take() {
				switch ev.Kind {
				case EventForget:
					got = append(got, drop{ev.ID, ev.Reason})
				case EventJoin, EventRestart, EventReady:
					t.Errorf("reconfigure reported %s of %s: kept members are not new", ev.Kind, ev.ID)
				}
			}
			if !slices.Equal(got, tt.drops) {
				t.Errorf("dropped %v, want %v", got, tt.drops)
			}
			mustRouted(t, r, tt.routed...)
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

// mod2 is one instance's first heartbeat in a table.
type mod2 struct {
	id   string
	mods []mod
}

// TestReconfigureRefusesAndChangesNothing: an invalid config, or another
// prefix, is an error and the registry keeps its settings and members.
func TestReconfigureRefusesAndChangesNothing(t *testing.T) {
	for _, bad := range []Config{
		{StaleAfter: -time.Second},
		{AllowIDs: []string{"[oops"}},
		{PriorityRange: &PriorityRange{Min: 5, Max: 1}},
		{Priority: map[string]int{"a": 1 << 30}},
		{Prefix: "other.prefix"},
	} {
		r, rec := newReg(t, Config{StaleAfter: 2 * time.Second})
		r.Apply(beat("a", 1), at(0))
		rec.take()
		if err := r.Reconfigure(bad); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
		if got := r.Config().StaleAfter; got != 2*time.Second {
			t.Errorf("%+v: stale_after %v after a refused reconfigure, want 2s", bad, got)
		}
		mustRouted(t, r, "a")
		mustKinds(t, rec)
		if err := bad.Validate(); err == nil && bad.Prefix == "" {
			t.Errorf("%+v: Validate accepts it", bad)
		}
	}
}

// TestReconfigureKeepsEventsToTheFirstOnEvent: the registry reports to
// the OnEvent given to New, whatever Reconfigure is given.
func TestReconfigureKeepsEventsToTheFirstOnEvent(t *testing.T) {
	r, rec := newReg(t, Config{})
	other := &recorder{}
	if err := r.Reconfigure(Config{OnEvent: other.on}); err != nil {
		t.Fatal(err)
	}
	r.Apply(beat("a", 1), at(0))
	mustKinds(t, rec, EventJoin)
	mustKinds(t, other)
}

// TestReconfigureWhileBusy: reloads while heartbeats arrive, sweeps run,
// probes answer and readers read; -race checks that whatever runs without
// the registry's lock reads nothing Reconfigure writes.
func TestReconfigureWhileBusy(t *testing.T) {
	r, _ := newReg(t, Config{RebuildEvery: time.Millisecond})
	confirm := func(string) bool { return true }
	done := make(chan struct{})
	var wg sync.WaitGroup
	run := func(f func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
					f(i)
				}
			}
		}()
	}
	run(func(i int) {
		data, _ := heartbeat.Encode(beat(fmt.Sprintf("app%d", i%20), int64(i+1), withVersion(fmt.Sprint(i%7)))) // decoded, not recognised
		_ = r.Observe(heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, fmt.Sprintf("app%d", i%20)), data, time.Now())
	})
	run(func(int) { r.Sweep(time.Now().Add(time.Hour)) })
	run(func(int) { _ = r.Snapshot(); _ = r.Members(); _ = r.Config(); _ = r.RoleConflicts() })
	started := time.Now()
	for i := 0; time.Since(started) < 300*time.Millisecond; i++ {
		cfg := Config{StaleAfter: time.Duration(1+i%3) * time.Millisecond, RebuildEvery: time.Millisecond}
		if i%2 == 0 {
			cfg.Confirm, cfg.AllowIDs = confirm, []string{"app1*"}
		}
		if err := r.Reconfigure(cfg); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
}
