package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// Claims of the README checked through a Caddyfile and a running gateway:
// HTTP answers, the status JSON and page, and /metrics.

func TestSubjectPrefixPriorityAndStatusOptionsAtRuntime(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, `http://127.0.0.1:{PORT} {
	handle /status {
		cx_status {
			subject_prefix cx.shop
			title "Shop gateway"
		}
	}
	handle /default/* {
		cx_proxy {
			stale_after 10s
		}
	}
	handle {
		cx_proxy {
			subject_prefix cx.shop
			priority app2 -1
			stale_after 10s
		}
	}
}`)
	nc := connect(t, natsURL)
	app1, app2, other := startBackend(t, "app1"), startBackend(t, "app2"), startBackend(t, "other")
	for _, in := range []*instance{newInstance(t, nc, "app1", app1.url, 0), newInstance(t, nc, "app2", app2.url, 1)} {
		in.prefix = "cx.shop"
		in.beat(heartbeat.StateReady)
	}
	// Announced on the default prefix, with the best priority: routed by
	// the default prefix's proxy only.
	newInstance(t, nc, "other", other.url, -100).beat(heartbeat.StateReady)
	servedBy(t, base+"/default/", "other", 2*time.Second)

	// app2 announced 1, the gateway's `priority app2 -1` makes it primary.
	servedBy(t, base, "app2", 2*time.Second)
	if counts := countServers(t, base, 20); counts["app2"] != 20 {
		t.Fatalf("served %v, want app2 (priority -1 by the gateway) only", counts)
	}
	s := serviceStatus(t, base+"/status", "cx.shop", func(s ServiceStatus) bool { return len(s.Instances) == 2 }, "two instances of cx.shop")
	if in, _ := instanceStatus(s, "app2"); in.Priority != -1 || in.AnnouncedPriority != 1 || !in.Primary {
		t.Fatalf("app2 in the status: %s, want priority -1 (announced 1), primary", mustJSON(in))
	}
	rep, _ := fetchReport(t, base+"/status", "application/json")
	if len(rep.Services) != 1 {
		t.Fatalf("cx_status with subject_prefix cx.shop lists %d services, want it alone: %s", len(rep.Services), mustJSON(rep))
	}
	resp, err := client.Get(base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "<title>Shop gateway") || !strings.Contains(string(page), ">Shop gateway<") {
		t.Fatalf("the status page does not carry its title:\n%.600s", page)
	}
}

// TestLbRetryMatchOverrideReplacesTheDefault: a cx_proxy block that sets
// lb_retry_match gets only its own (README: the defaults are added "only
// when the block does not set it"): here a POST answered 503 is retried on
// the backup, a GET answered 503 is not.
func TestLbRetryMatchOverrideReplacesTheDefault(t *testing.T) {
	base, app1, app2 := primaryAndBackup(t, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tstale_after 10s\n\t\tlb_retry_match {\n\t\t\tmethod POST\n\t\t\texpression `{http.reverse_proxy.status_code} in [503]`\n\t\t}\n\t}\n}")
	app1.failing.Store(true)
	if id, code := get(t, "GET", base); code != http.StatusServiceUnavailable || id != "app1" {
		t.Fatalf("GET: status %d from %q, want the primary's 503 (the default retry of 503 is replaced)", code, id)
	}
	if id, code := get(t, "POST", base); code != http.StatusOK || id != "app2" {
		t.Fatalf("POST: status %d from %q, want 200 from the backup (the block's own lb_retry_match)", code, id)
	}
	if n1, n2 := app1.count("POST"), app2.count("GET"); n1 != 1 || n2 != 0 {
		t.Fatalf("the primary got %d POSTs (want 1: tried, then retried), the backup %d GETs (want 0)", n1, n2)
	}
}

func TestDynamicCxWithCxPoliciesInPlainReverseProxy(t *testing.T) {
	for _, tt := range []struct {
		policy string
		want   map[string]int
	}{
		{"cx_failover", map[string]int{"app1": 20}},
		{"cx_round_robin", map[string]int{"app1": 10, "app2": 10}},
	} {
		t.Run(tt.policy, func(t *testing.T) {
			site := fmt.Sprintf("http://127.0.0.1:{PORT} {\n\treverse_proxy {\n\t\tdynamic cx {\n\t\t\tstale_after 10s\n\t\t}\n\t\tlb_policy %s\n\t\tlb_retries 2\n\t}\n}", tt.policy)
			base, app1, _ := primaryAndBackup(t, site)
			if counts := countServers(t, base, 20); fmt.Sprint(counts) != fmt.Sprint(tt.want) {
				t.Fatalf("served %v, want %v", counts, tt.want)
			}
			// Both policies leave a failed instance for the other one.
			app1.close()
			for range 10 {
				if id, code := get(t, "GET", base); code != http.StatusOK || id != "app2" {
					t.Fatalf("with app1 down: status %d from %q, want app2", code, id)
				}
			}
		})
	}
}

func TestStatusShowsHeldAndServedVersion(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tmetrics /metrics\n\tcx_status /cx\n\tcx_proxy {\n\t\tversions consistent\n\t\tflap_limit 2\n\t\tflap_window 1m\n\t\tflap_hold 1m\n\t\tstale_after 10s\n\t}\n}")
	nc := connect(t, natsURL)
	steady, flappy := startBackend(t, "steady"), startBackend(t, "flappy")
	s := newInstance(t, nc, "steady", steady.url, 1)
	s.msg.Version = "2026.9"
	s.beat(heartbeat.StateReady)
	f := newInstance(t, nc, "flappy", flappy.url, 0)
	f.msg.Version = "2026.9"
	for range 3 { // the third exit from active within flap_window holds it
		f.beat(heartbeat.StateReady)
		f.beat(heartbeat.StateDraining)
	}
	f.beat(heartbeat.StateReady)
	// A marker sent after the last heartbeat on the same connection: once
	// it is listed, the gateway has applied every flappy heartbeat.
	newInstance(t, nc, "marker", steady.url, 5).beat(heartbeat.StateDraining)
	svc := serviceStatus(t, base+"/cx", heartbeat.DefaultPrefix, func(s ServiceStatus) bool {
		_, ok := instanceStatus(s, "marker")
		return ok
	}, "the marker listed")
	if in, _ := instanceStatus(svc, "flappy"); in.State != "active" {
		t.Fatalf("flappy in the status: %s, want active (and held)", mustJSON(in))
	}
	if in, _ := instanceStatus(svc, "flappy"); !in.Held || in.HeldUntil.Before(time.Now().Add(50*time.Second)) || in.Primary {
		t.Fatalf("flappy in the status: %s, want held for about flap_hold (1m), not primary", mustJSON(in))
	}
	if svc.ServedVersion != "2026.9" {
		t.Fatalf("served_version %q, want 2026.9", svc.ServedVersion)
	}
	assertNeverServedBy(t, base, "flappy", 10)
	waitMetric(t, base+"/metrics", `caddy_cx_served_version_info{service="cx.ha",version="2026.9"}`, 1)

	// A new version takes over once it has as many active instances.
	for _, id := range []string{"n1", "n2"} {
		b := startBackend(t, id)
		in := newInstance(t, nc, id, b.url, 2)
		in.msg.Version = "2026.10"
		in.beat(heartbeat.StateReady)
	}
	serviceStatus(t, base+"/cx", heartbeat.DefaultPrefix, func(s ServiceStatus) bool { return s.ServedVersion == "2026.10" }, "served_version 2026.10")
	m := waitMetric(t, base+"/metrics", `caddy_cx_served_version_info{service="cx.ha",version="2026.10"}`, 1)
	if _, ok := m[`caddy_cx_served_version_info{service="cx.ha",version="2026.9"}`]; ok {
		t.Fatalf("the old served version is still exported: %v", m)
	}
	if id, _ := get(t, "GET", base); id != "n1" && id != "n2" {
		t.Fatalf("served by %q, want an instance of 2026.10", id)
	}
}

func TestLeaderRoleConflictMetric(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tmetrics /metrics\n\tcx_proxy {\n\t\tstale_after 10s\n\t}\n}")
	nc := connect(t, natsURL)
	const series = `caddy_cx_leader_role_conflict_since_timestamp_seconds{role="mailer",service="cx.ha"}`
	a := newInstance(t, nc, "a", startBackend(t, "a").url, 0)
	a.msg.LeaderRoles = []string{"mailer"}
	a.beat(heartbeat.StateReady)
	b := newInstance(t, nc, "b", startBackend(t, "b").url, 1)
	b.beat(heartbeat.StateReady)
	servedBy(t, base, "a", 2*time.Second)
	if _, ok := scrape(t, base+"/metrics")[series]; ok {
		t.Fatal("a role held by one instance is reported as a conflict")
	}
	before := time.Now()
	b.msg.LeaderRoles = []string{"mailer"}
	b.beat(heartbeat.StateReady)
	var since float64
	eventually(t, 2*time.Second, func() bool {
		var ok bool
		since, ok = scrape(t, base+"/metrics")[series]
		return ok
	}, series)
	// Unix seconds of the moment the second claim arrived.
	if at := time.Unix(0, int64(since*1e9)); at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Fatalf("%s = %v (%v), want the time of the second claim, %v", series, since, at, before)
	}
	// One of them gives the role up: the conflict is over.
	b.msg.LeaderRoles = nil
	b.beat(heartbeat.StateReady)
	waitMetric(t, base+"/metrics", series, -1)
}

func TestNATSReconnectsMetric(t *testing.T) {
	natsPort := freePort(t)
	first := natstest.Start(t, &server.Options{Port: natsPort})
	base := gateway(t, fmt.Sprintf("nats://127.0.0.1:%d", natsPort), "http://127.0.0.1:{PORT} {\n\tmetrics /metrics\n\tcx_proxy\n}")
	m := scrape(t, base+"/metrics")
	expectMetric(t, m, "caddy_cx_nats_reconnects_total", 0)
	first.Shutdown()
	first.WaitForShutdown()
	waitMetric(t, base+"/metrics", "caddy_cx_nats_connected", 0)
	natstest.Start(t, &server.Options{Port: natsPort})
	m = waitMetric(t, base+"/metrics", "caddy_cx_nats_connected", 1)
	expectMetric(t, m, "caddy_cx_nats_reconnects_total", 1)
}
