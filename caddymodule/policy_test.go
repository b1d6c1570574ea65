package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// The policy's pure parts on a fake pool: a registry driven by an injected
// clock (every Apply and Sweep is given its time), and requests that never
// leave the process.

// fleet is a registry whose clock the test moves.
type fleet struct {
	t   *testing.T
	reg *membership.Registry
	seq map[string]int64
}

func newFleet(t *testing.T, cfg membership.Config) *fleet {
	t.Helper()
	cfg.Prefix = "cx.test"
	reg, err := membership.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	return &fleet{t: t, reg: reg, seq: map[string]int64{}}
}

// beat applies a heartbeat of id (url http://127.0.0.1:port) at now.
func (f *fleet) beat(now time.Time, id string, port, priority int, version string, state heartbeat.State) {
	f.seq[id]++
	f.reg.Apply(&heartbeat.Message{Proto: heartbeat.Proto, ID: id, URL: fmt.Sprintf("http://127.0.0.1:%d", port),
		State: state, StartedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Seq: f.seq[id], IntervalMS: 1000,
		Version: version, Priority: priority}, now)
}

// service wraps the registry as the upstream source's service would.
func (f *fleet) service(failbackDelay time.Duration) *Service {
	s := &Service{prefix: "cx.test", reg: f.reg, health: newPassiveHealth(time.Hour)}
	s.failback.set(failbackDelay)
	return s
}

// proxied returns a request with the variables Caddy gives every request.
func proxied(method string) *http.Request {
	r := httptest.NewRequest(method, "http://gateway/", nil)
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
}

// selected returns the instance ids the policy picks for n new requests.
func selected(u *Upstreams, p reverseproxy.Selector, now time.Time, n int) []string {
	var ids []string
	for range n {
		r := proxied("GET")
		c := u.poolOf(u.service.reg.Snapshot(), now, nil)
		requestOf(r).setPool(c)
		if up := p.Select(c.ups, r, nil); up != nil {
			ids = append(ids, c.routes[slices.Index(c.ups, up)].ID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// statusPrimary is what the status page and the admin API name primary.
func statusPrimary(s *Service, now time.Time) []string {
	ids := s.status(now, DefaultStatusLimit).Primary
	slices.Sort(ids)
	return ids
}

func sorted(ids []string) []string {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return ids
}

// TestPrimaryIsWhatThePolicyPicks shows the policy, the status page (and
// admin API, the same report) and primaryIDs (caddy_cx_primary) agreeing in
// the states where the primary is not simply the best tier.
func TestPrimaryIsWhatThePolicyPicks(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		cfg  membership.Config
		opts Upstreams
		// setup drives the registry; it returns the time to look at.
		setup func(f *fleet) time.Time
		want  []string
	}{{
		name: "failback_delay: the returning primary waits",
		opts: Upstreams{FailbackDelay: caddy.Duration(30 * time.Second)},
		setup: func(f *fleet) time.Time {
			f.beat(t0, "backup", 2, 10, "", heartbeat.StateReady)
			f.beat(t0.Add(time.Hour), "primary", 1, 0, "", heartbeat.StateReady)
			return t0.Add(time.Hour + 10*time.Second)
		},
		want: []string{"backup"},
	}, {
		name: "failback_delay over: the primary serves",
		opts: Upstreams{FailbackDelay: caddy.Duration(30 * time.Second)},
		setup: func(f *fleet) time.Time {
			f.beat(t0, "backup", 2, 10, "", heartbeat.StateReady)
			f.beat(t0.Add(time.Hour), "primary", 1, 0, "", heartbeat.StateReady)
			return t0.Add(time.Hour + 31*time.Second)
		},
		want: []string{"primary"},
	}, {
		name: "slow_start: a ramping peer shares the tier, the backup does not",
		opts: Upstreams{SlowStart: caddy.Duration(time.Minute)},
		setup: func(f *fleet) time.Time {
			f.beat(t0, "old", 1, 0, "", heartbeat.StateReady)
			f.beat(t0, "backup", 3, 10, "", heartbeat.StateReady)
			f.beat(t0.Add(time.Hour), "new", 2, 0, "", heartbeat.StateReady)
			return t0.Add(time.Hour + 30*time.Second)
		},
		want: []string{"new", "old"},
	}, {
		name: "versions consistent: only the served version",
		cfg:  membership.Config{ConsistentVersions: true},
		setup: func(f *fleet) time.Time {
			f.beat(t0, "v1a", 1, 0, "1", heartbeat.StateReady)
			f.beat(t0, "v1b", 2, 0, "1", heartbeat.StateReady)
			f.beat(t0.Add(time.Second), "v2a", 3, 0, "2", heartbeat.StateReady)
			return t0.Add(2 * time.Second)
		},
		want: []string{"v1a", "v1b"},
	}, {
		name: "flap hold: the held primary is not primary",
		cfg:  membership.Config{FlapLimit: 1, FlapWindow: time.Minute, FlapHold: time.Hour},
		setup: func(f *fleet) time.Time {
			f.beat(t0, "backup", 2, 10, "", heartbeat.StateReady)
			for i := range 3 {
				at := t0.Add(time.Duration(i) * 2 * time.Second)
				f.beat(at, "primary", 1, 0, "", heartbeat.StateReady)
				f.beat(at.Add(time.Second), "primary", 1, 0, "", heartbeat.StateDraining)
			}
			f.beat(t0.Add(10*time.Second), "primary", 1, 0, "", heartbeat.StateReady)
			return t0.Add(11 * time.Second)
		},
		want: []string{"backup"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, tc.cfg)
			now := tc.setup(f)
			u := tc.opts
			u.service = f.service(time.Duration(u.FailbackDelay))
			if got := sorted(u.service.primaryIDs(now)); !slices.Equal(got, tc.want) {
				t.Fatalf("primaryIDs (caddy_cx_primary) = %v, want %v", got, tc.want)
			}
			if got := statusPrimary(u.service, now); !slices.Equal(got, tc.want) {
				t.Fatalf("status page primary = %v, want %v", got, tc.want)
			}
			if got := selected(&u, &Failover{}, now, 200); !slices.Equal(got, tc.want) {
				t.Fatalf("cx_failover picks %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPrimaryFollowsPassiveHealth: a failing primary hands over to the
// next tier, and when every instance is failing the best tier is primary
// again (the policy tries it anyway).
func TestPrimaryFollowsPassiveHealth(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	f := newFleet(t, membership.Config{})
	f.beat(t0, "a", 1, 0, "", heartbeat.StateReady)
	f.beat(t0, "b", 2, 10, "", heartbeat.StateReady)
	u := Upstreams{service: f.service(0)}
	now := t0.Add(time.Minute)
	u.service.health.fail("127.0.0.1:1", now)
	if got := u.service.primaryIDs(now); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("a failing: primary %v, want [b]", got)
	}
	if got := selected(&u, &Failover{}, now, 10); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("a failing: picks %v, want [b]", got)
	}
	u.service.health.fail("127.0.0.1:2", now)
	if got := u.service.primaryIDs(now); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("all failing: primary %v, want [a]", got)
	}
	if got := selected(&u, &Failover{}, now, 10); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("all failing: picks %v, want [a]", got)
	}
	// fail_timeout passes on the injected clock, not the wall clock.
	if got := u.service.primaryIDs(now.Add(2 * time.Hour)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after fail_timeout: primary %v, want [a]", got)
	}
}

// TestPrimaryMetricDuringFailback reads caddy_cx_primary itself: the
// collector takes the wall clock, so the fleet's clock is set around it
// with margins no scheduling delay reaches.
func TestPrimaryMetricDuringFailback(t *testing.T) {
	now := time.Now()
	f := newFleet(t, membership.Config{})
	f.beat(now.Add(-2*time.Hour), "backup", 2, 10, "", heartbeat.StateReady)
	f.beat(now.Add(-time.Second), "primary", 1, 0, "", heartbeat.StateReady)
	s := f.service(time.Hour)
	ch := make(chan prometheus.Metric, 64)
	collectService(ch, s)
	close(ch)
	primary := map[string]float64{}
	for m := range ch {
		if m.Desc() != descPrimary {
			continue
		}
		var out dto.Metric
		if err := m.Write(&out); err != nil {
			t.Fatal(err)
		}
		for _, l := range out.GetLabel() {
			if l.GetName() == "instance_id" {
				primary[l.GetValue()] = out.GetGauge().GetValue()
			}
		}
	}
	if primary["backup"] != 1 || primary["primary"] != 0 {
		t.Fatalf("caddy_cx_primary %v, want backup 1 and primary 0 during failback_delay", primary)
	}
}
