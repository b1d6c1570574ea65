package caddymodule

import (
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// versionedBackend answers with its instance id and version.
func versionedBackend(t *testing.T, id, version string) *backend {
	b := startBackend(t, id)
	b.version = version
	return b
}

func TestConsistentVersionsRollingDeployUnderLoad(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tpolicy round_robin\n\t\tversions consistent\n\t\tstale_after 10s\n\t}\n}")
	nc := connect(t, natsURL)
	ids := []string{"a", "b", "c"}
	insts := map[string]*instance{}
	for _, id := range ids {
		b := versionedBackend(t, id, "2026.9")
		insts[id] = newInstance(t, nc, id, b.url, 0)
		insts[id].msg.Version = "2026.9"
		insts[id].beat(heartbeat.StateReady)
	}
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 3 }, "3 routes")

	var mu sync.Mutex
	var versions []string
	var failures atomic.Int64
	stop := getsInBackground(base, func(resp *http.Response, err error) {
		if err != nil || resp.StatusCode != http.StatusOK {
			failures.Add(1)
			return
		}
		mu.Lock()
		if v := resp.Header.Get("X-Version"); len(versions) == 0 || versions[len(versions)-1] != v {
			versions = append(versions, v)
		}
		mu.Unlock()
	})
	// Roll: each instance leaves and a new one of version 2026.10 takes
	// its place (new process, new address).
	for i, id := range ids {
		time.Sleep(150 * time.Millisecond) // load runs against each step of the rollout
		insts[id].beat(heartbeat.StateLeaving)
		b := versionedBackend(t, id, "2026.10")
		insts[id] = newInstance(t, nc, id, b.url, 0)
		insts[id].msg.Version = "2026.10"
		insts[id].msg.StartedAt = insts[id].msg.StartedAt.Add(time.Duration(i+1) * time.Second)
		insts[id].beat(heartbeat.StateReady)
	}
	time.Sleep(150 * time.Millisecond)
	stop()
	mu.Lock()
	defer mu.Unlock()
	if failures.Load() != 0 {
		t.Fatalf("%d requests failed during the rolling deploy", failures.Load())
	}
	if len(versions) != 2 || versions[0] != "2026.9" || versions[1] != "2026.10" {
		t.Fatalf("served versions in order %v, want exactly one switch 2026.9 -> 2026.10", versions)
	}
}

func TestFlappingInstanceIsHeldOut(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tflap_limit 2\n\t\tflap_window 10s\n\t\tflap_hold 2s\n\t}\n}")
	nc := connect(t, natsURL)
	steady, flappy := startBackend(t, "steady"), startBackend(t, "flappy")
	s := newInstance(t, nc, "steady", steady.url, 1)
	s.beat(heartbeat.StateReady)
	t.Cleanup(s.keepBeating())
	f := newInstance(t, nc, "flappy", flappy.url, 0)
	// ready/draining every 300ms: the third exit from active holds it out.
	for range 3 {
		f.beat(heartbeat.StateReady)
		time.Sleep(300 * time.Millisecond) // the flapping period under test
		f.beat(heartbeat.StateDraining)
		time.Sleep(300 * time.Millisecond)
	}
	f.beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return stateOf(t, "flappy") == "active" }, "flappy ready again")
	assertNeverServedBy(t, base, "flappy", 20)
	if m := memberOf(t, "flappy"); !m.Held || m.HeldUntil.IsZero() {
		t.Fatalf("flappy should be held with a deadline: %+v", m)
	}
	// The hold ends by itself.
	t.Cleanup(f.keepBeating())
	servedBy(t, base, "flappy", 5*time.Second)
}

func TestSlowStartRampsShare(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tpolicy round_robin\n\t\tslow_start 3s\n\t}\n}")
	nc := connect(t, natsURL)
	old, fresh := startBackend(t, "old"), startBackend(t, "fresh")
	o := newInstance(t, nc, "old", old.url, 0)
	o.beat(heartbeat.StateReady)
	t.Cleanup(o.keepBeating())
	// let "old" finish its own ramp
	eventually(t, time.Second, func() bool { return stateOf(t, "old") == "active" }, "old active")
	eventually(t, 5*time.Second, func() bool { return time.Since(memberOf(t, "old").ActiveSince) > 3*time.Second }, "old fully ramped")
	fr := newInstance(t, nc, "fresh", fresh.url, 0)
	fr.beat(heartbeat.StateReady)
	t.Cleanup(fr.keepBeating())
	eventually(t, time.Second, func() bool { return stateOf(t, "fresh") == "active" }, "fresh active")
	early := countServers(t, base, 200)["fresh"]
	// Its weight is at most max(0.1, age/slow_start) against old's 1 during
	// the count; the picks are random, so allow 4 standard deviations.
	age := time.Since(memberOf(t, "fresh").ActiveSince)
	w := max(0.1, float64(age)/float64(3*time.Second))
	p := w / (1 + w)
	limit := 200*p + 4*math.Sqrt(200*p*(1-p))
	eventually(t, 5*time.Second, func() bool { return time.Since(memberOf(t, "fresh").ActiveSince) > 3*time.Second }, "fresh past slow_start")
	late := countServers(t, base, 200)["fresh"]
	t.Logf("fresh instance's share: %d/200 in its first %v (limit %.0f), %d/200 after slow_start", early, age, limit, late)
	if float64(early) > limit {
		t.Fatalf("a just-joined instance took %d of 200 requests in its first %v; its ramp allows at most %.0f", early, age, limit)
	}
	if late != 100 {
		t.Fatalf("after slow_start the fresh instance took %d of 200; round_robin of two gives exactly half", late)
	}
}

func TestConfirmWithKeepsAnsweringInstanceRouted(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tstale_after 400ms\n\t\tconfirm_with /health\n\t}\n}")
	nc := connect(t, natsURL)
	app1, app2 := startBackend(t, "app1"), startBackend(t, "app2")
	newInstance(t, nc, "app1", app1.url, 0).beat(heartbeat.StateReady)
	i2 := newInstance(t, nc, "app2", app2.url, 1)
	i2.beat(heartbeat.StateReady)
	t.Cleanup(i2.keepBeating())
	servedBy(t, base, "app1", time.Second)
	// app1's heartbeats have stopped but its HTTP answers: it stays routed.
	time.Sleep(time.Second) // well past stale_after: the silence under test
	if state := stateOf(t, "app1"); state != "active" {
		t.Fatalf("app1 is %s; its url answers, it should stay active", state)
	}
	if id, _ := get(t, "GET", base); id != "app1" {
		t.Fatalf("served by %q, want app1", id)
	}
	// Once it stops answering too, it turns stale.
	app1.failing.Store(true)
	eventually(t, 3*time.Second, func() bool { return stateOf(t, "app1") == "stale" }, "app1 stale once its url fails")
}

func TestFailbackDelayKeepsBackupServing(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tfailback_delay 1s\n\t}\n}")
	nc := connect(t, natsURL)
	app1, app2 := startBackend(t, "app1"), startBackend(t, "app2")
	i2 := newInstance(t, nc, "app2", app2.url, 1)
	i2.beat(heartbeat.StateReady)
	t.Cleanup(i2.keepBeating())
	servedBy(t, base, "app2", 2*time.Second)
	eventually(t, 3*time.Second, func() bool { return time.Since(memberOf(t, "app2").ActiveSince) > time.Second }, "app2 past failback_delay itself")
	// The primary comes back: the backup keeps serving for failback_delay.
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	back := time.Now() // app1's ActiveSince is later: the delay runs from there
	i1.beat(heartbeat.StateReady)
	t.Cleanup(i1.keepBeating())
	eventually(t, time.Second, func() bool { return stateOf(t, "app1") == "active" }, "app1 active")
	assertNeverServedBy(t, base, "app1", 10)
	// 300ms past the delay: a 50ms rebuild and one GET on a shared -race machine.
	servedBy(t, base, "app1", time.Until(back.Add(time.Second+300*time.Millisecond)))
	took := time.Since(back)
	// 10ms margin: the gateway's and the test's clocks are read on different goroutines.
	if took < time.Second-10*time.Millisecond {
		t.Fatalf("primary took over %v after returning, before failback_delay 1s", took)
	}
	t.Logf("primary took over %v after returning (failback_delay 1s)", took)
}
