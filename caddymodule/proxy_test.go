package caddymodule

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

const basicSite = "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tstale_after 600ms\n\t}\n}"

// steadySite is for tests whose instances beat once and must not turn
// stale while a slow (shared, -race) machine runs their requests.
const steadySite = "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tstale_after 10s\n\t}\n}"

func TestNewInstanceRoutedWithinMillisecondsOfFirstHeartbeat(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, basicSite)
	nc := connect(t, natsURL)

	if _, code := get(t, "GET", base); code != http.StatusServiceUnavailable {
		t.Fatalf("with no instance: status %d, want 503", code)
	}
	app1 := startBackend(t, "app1")
	newInstance(t, nc, "app1", app1.url, 0).beat(heartbeat.StateReady)
	// "Within milliseconds": at most one coalesced rebuild (RebuildEvery
	// 50ms) plus a GET; 250ms leaves room for a shared -race machine.
	took := servedBy(t, base, "app1", 250*time.Millisecond)
	t.Logf("first heartbeat to first routed request: %v", took)
}

func TestGatewayFindsRunningInstancesThroughDiscover(t *testing.T) {
	natsURL := startNATS(t)
	app1 := startBackend(t, "app1")
	pub, err := heartbeat.NewPublisher(connect(t, natsURL), heartbeat.Config{ID: "app1", URL: app1.url, Interval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	defer pub.Stop()

	// The instance's next periodic heartbeat is a minute away: only the
	// gateway's discover can bring it in.
	start := time.Now()
	base := gateway(t, natsURL, basicSite)
	servedBy(t, base, "app1", 2*time.Second)
	t.Logf("gateway start to first routed request: %v", time.Since(start))
}

func TestDrainingLeavingStaleAndRestart(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, basicSite)
	nc := connect(t, natsURL)
	app1, app2 := startBackend(t, "app1"), startBackend(t, "app2")
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	i2 := newInstance(t, nc, "app2", app2.url, 1)
	stop2 := i2.keepBeating()
	defer stop2()
	i1.beat(heartbeat.StateReady)
	servedBy(t, base, "app1", time.Second)

	i1.beat(heartbeat.StateDraining)
	servedBy(t, base, "app2", time.Second)
	assertNeverServedBy(t, base, "app1", 20)

	i1.beat(heartbeat.StateReady)
	servedBy(t, base, "app1", time.Second)

	i1.beat(heartbeat.StateLeaving)
	servedBy(t, base, "app2", time.Second)
	assertNeverServedBy(t, base, "app1", 20)

	// leaving is final for this process: a late ready is ignored.
	i1.beat(heartbeat.StateReady)
	assertNeverServedBy(t, base, "app1", 20)

	// a new process with the same id is admitted again.
	i1.restart()
	i1.beat(heartbeat.StateReady)
	servedBy(t, base, "app1", time.Second)

	// silence: out of routing after stale_after (600ms).
	silentSince := time.Now()
	servedBy(t, base, "app2", 3*time.Second)
	t.Logf("silence to out of routing: %v (stale_after 600ms)", time.Since(silentSince))
	if state := stateOf(t, "app1"); state != "stale" {
		t.Fatalf("app1 is %s, want stale", state)
	}
}

func assertNeverServedBy(t *testing.T, base, id string, n int) {
	t.Helper()
	for range n {
		if got, code := get(t, "GET", base); got == id || code != http.StatusOK {
			t.Fatalf("request served by %q with status %d; %s must get none", got, code, id)
		}
	}
}

func stateOf(t *testing.T, id string) string {
	t.Helper()
	for _, m := range serviceOf(t, heartbeat.DefaultPrefix).reg.Members() {
		if m.ID == id {
			return string(m.State)
		}
	}
	return "unknown"
}

func TestTwoTiersOfTwo(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, steadySite)
	nc := connect(t, natsURL)
	ids := []string{"a1", "a2", "b1", "b2"}
	inst := map[string]*instance{}
	for i, id := range ids {
		b := startBackend(t, id)
		inst[id] = newInstance(t, nc, id, b.url, i/2*10)
		inst[id].beat(heartbeat.StateReady)
	}
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 4 }, "4 routes")

	counts := countServers(t, base, 100)
	if counts["a1"] != 50 || counts["a2"] != 50 {
		t.Fatalf("first tier should share round-robin exactly: %v", counts)
	}
	inst["a1"].beat(heartbeat.StateLeaving)
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 3 }, "3 routes")
	if counts := countServers(t, base, 40); counts["a2"] != 40 {
		t.Fatalf("one instance of the first tier left must take everything: %v", counts)
	}
	inst["a2"].beat(heartbeat.StateLeaving)
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 2 }, "2 routes")
	if counts := countServers(t, base, 100); counts["b1"] != 50 || counts["b2"] != 50 {
		t.Fatalf("second tier should serve once the first is gone: %v", counts)
	}
}

func countServers(t *testing.T, base string, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		id, code := get(t, "GET", base)
		if code != http.StatusOK {
			t.Fatalf("status %d", code)
		}
		counts[id]++
	}
	return counts
}

func TestRoundRobinPolicySpreadsEvenly(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tpolicy round_robin\n\t\tstale_after 10s\n\t}\n}")
	nc := connect(t, natsURL)
	for i, id := range []string{"r1", "r2", "r3"} {
		b := startBackend(t, id)
		newInstance(t, nc, id, b.url, i).beat(heartbeat.StateReady)
	}
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 3 }, "3 routes")
	counts := countServers(t, base, 600)
	for _, id := range []string{"r1", "r2", "r3"} {
		if c := counts[id]; c != 200 {
			t.Fatalf("%s served %d of 600; round_robin over three gives exactly 200 each: %v", id, c, counts)
		}
	}
}
