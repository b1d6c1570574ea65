package caddymodule

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// TestReloadReconfiguresInPlace: a reload that changes a service's
// settings and the log output keeps the live service: its members stay
// (no join is counted again) and routing goes on through the reload, the
// new settings take effect at once (allow_ids narrowed drops an instance,
// a shorter stale_after applies to the members kept), and membership
// lines go to the new config's log.
func TestReloadReconfiguresInPlace(t *testing.T) {
	natsURL := startNATS(t)
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	dir := t.TempDir()
	logA, logB := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	load := func(logFile, options string) {
		loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tlog {\n\t\toutput file %s\n\t\tformat json\n\t}\n\tcx {\n\t\tnats %s\n\t}\n}\n"+
			"http://127.0.0.1:%d {\n\tmetrics /metrics\n\tcx_proxy {\n%s\n\t}\n}\n", logFile, natsURL, port, options))
	}
	load(logA, "\t\tstale_after 5s")
	t.Cleanup(func() { _ = caddy.Stop() })
	// an idle connection to an earlier test's server on this port would be reset
	client.CloseIdleConnections()
	eventually(t, 5*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "gateway listening")

	nc := connect(t, natsURL)
	app1, web1 := startBackend(t, "app1"), startBackend(t, "web1")
	iApp, iWeb := newInstance(t, nc, "app1", app1.url, 0), newInstance(t, nc, "web1", web1.url, 1)
	iApp.beat(heartbeat.StateReady)
	iWeb.beat(heartbeat.StateReady)
	stopApp, stopWeb := iApp.keepBeating(), iWeb.keepBeating()
	defer stopApp()
	defer stopWeb()
	waitMetric(t, base+"/metrics", `caddy_cx_instances{service="cx.ha",state="active"}`, 2)
	logHas(t, logA, `"instance":"web1"`)
	before := serviceOf(t, heartbeat.DefaultPrefix)

	// requests go on all through the reload
	var served, failed atomic.Int64
	var failures sync.Map
	stop := getsInBackground(base+"/", func(resp *http.Response, err error) {
		if err != nil {
			return // Go's server-shutdown race on a reused connection: not a routing error
		}
		if resp.StatusCode != 200 {
			failed.Add(1)
			failures.Store(resp.StatusCode, true)
		}
		served.Add(1)
	})

	load(logB, "\t\tstale_after 1s\n\t\tallow_ids app*")
	if after := serviceOf(t, heartbeat.DefaultPrefix); after != before {
		t.Fatal("the reload made a new service: members and counters were not kept in place")
	}
	eventually(t, 5*time.Second, func() bool { return !hasMember(before, "web1") }, "web1 dropped by allow_ids")
	if m := memberOf(t, "app1"); m.StaleAfter != time.Second || m.State != membership.StateActive {
		t.Fatalf("app1 after the reload: %s, stale_after %v; want active, 1s", m.State, m.StaleAfter)
	}
	m := waitMetric(t, base+"/metrics", `caddy_cx_membership_events_total{event="forget",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_membership_events_total{event="join",service="cx.ha"}`, 2)
	if got, code := get(t, "GET", base); got != "app1" || code != 200 {
		t.Fatalf("after the reload: served by %q, status %d; want app1, 200", got, code)
	}
	start := served.Load()
	eventually(t, 5*time.Second, func() bool { return served.Load() > start+20 }, "requests after the reload")
	stop()
	if n := failed.Load(); n > 0 {
		var codes []any
		failures.Range(func(k, _ any) bool { codes = append(codes, k); return true })
		t.Fatalf("%d of %d requests failed around the reload (statuses %v)", n, served.Load(), codes)
	}

	// the new log has the reload's membership lines, the old one none
	out := logHas(t, logB, `"reason":"id"`)
	if !strings.Contains(out, `"event":"forget"`) || !strings.Contains(out, `"instance":"web1"`) {
		t.Errorf("the new log does not show web1 dropped:\n%s", out)
	}
	stopApp()
	stoppedAt := time.Now()
	logHas(t, logB, "instance stale")
	if took := time.Since(stoppedAt); took > 4*time.Second {
		t.Errorf("app1 turned stale %v after its last heartbeat: the new stale_after 1s was not applied", took)
	}
	old, _ := os.ReadFile(logA)
	if strings.Contains(string(old), `"event":"forget"`) || strings.Contains(string(old), "instance stale") {
		t.Errorf("membership lines after the reload went to the old config's log:\n%s", old)
	}
}

func hasMember(s *Service, id string) bool {
	for _, m := range s.reg.Members() {
		if m.ID == id {
			return true
		}
	}
	return false
}

// TestFailedReloadRestoresSettings: settings are applied when a config
// starts, and if that config then fails (another app does not start) its
// cleanup gives the service back the settings of the config still running.
func TestFailedReloadRestoresSettings(t *testing.T) {
	coreA, logsA := observer.New(zapcore.InfoLevel)
	coreB, logsB := observer.New(zapcore.InfoLevel)
	link := &natsLink{}
	running := &claim{settings: serviceSettings{membership: membership.Config{StaleAfter: 5 * time.Second}, failTimeout: time.Minute},
		logger: zap.New(coreA)}
	s, err := acquireService(link, running)
	if err != nil {
		t.Fatal(err)
	}
	defer s.release(running)
	now := time.Now()
	s.reg.Apply(&heartbeat.Message{Proto: heartbeat.Proto, ID: "app1", URL: "http://127.0.0.1:9", State: heartbeat.StateReady,
		StartedAt: now, Seq: 1, IntervalMS: 1000}, now)
	failing := &claim{settings: serviceSettings{membership: membership.Config{StaleAfter: time.Second, AllowIDs: []string{"web*"}}},
		logger: zap.New(coreB)}
	if again, err := acquireService(link, failing); err != nil || again != s {
		t.Fatalf("the second config got %p (%v), want the live service %p", again, err, s)
	}
	if got := s.reg.Config().StaleAfter; got != 5*time.Second {
		t.Fatalf("provisioning alone applied stale_after %v", got)
	}
	if err := s.use(failing); err != nil {
		t.Fatal(err)
	}
	if hasMember(s, "app1") || s.reg.Config().StaleAfter != time.Second || logsB.FilterMessage("membership").Len() != 1 {
		t.Fatalf("starting the second config: app1 kept %v, stale_after %v, lines in its log %d; want dropped, 1s, 1",
			hasMember(s, "app1"), s.reg.Config().StaleAfter, logsB.Len())
	}
	s.release(failing)
	if got := s.reg.Config(); got.StaleAfter != 5*time.Second || len(got.AllowIDs) != 0 ||
		time.Duration(s.health.timeout.Load()) != time.Minute {
		t.Fatalf("after the failed config's cleanup: %+v, fail_timeout %v; want the running config's", got, time.Duration(s.health.timeout.Load()))
	}
	logsA.TakeAll()
	s.reg.Apply(&heartbeat.Message{Proto: heartbeat.Proto, ID: "app1", URL: "http://127.0.0.1:9", State: heartbeat.StateReady,
		StartedAt: now, Seq: 2, IntervalMS: 1000}, now)
	if logsA.FilterMessage("membership").Len() != 1 {
		t.Fatalf("app1's return was not logged to the running config's log: %v", logsA.All())
	}
}

// TestTwoSitesOnePrefix: two sites naming one subject prefix share its
// service when their settings agree; when they differ, the config is
// refused with an error that names the prefix and the differences.
func TestTwoSitesOnePrefix(t *testing.T) {
	natsURL := startNATS(t)
	two := func(a, b string) string {
		return fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n"+
			"http://127.0.0.1:%d {\n\tcx_proxy {\n\t\t%s\n\t}\n}\nhttp://127.0.0.1:%d {\n\tcx_proxy {\n\t\t%s\n\t}\n}\n",
			natsURL, freePort(t), a, freePort(t), b)
	}
	err := loadErr(t, two("stale_after 3s", "stale_after 5s"))
	// the sites are provisioned in either order
	want := "subject_prefix cx.ha is used by two cx_proxy (or dynamic cx) blocks with different settings (stale_after %s): " +
		"give each its own subject_prefix or the same settings"
	if err == nil || (!strings.Contains(err.Error(), fmt.Sprintf(want, "3s vs 5s")) && !strings.Contains(err.Error(), fmt.Sprintf(want, "5s vs 3s"))) {
		t.Fatalf("two sites, one prefix, stale_after 3s and 5s: error %v, want one saying %q", err, fmt.Sprintf(want, "3s vs 5s"))
	}
	if err := loadErr(t, two("stale_after 3s\n\t\tsubject_prefix cx.a", "stale_after 5s\n\t\tsubject_prefix cx.b")); err != nil {
		t.Fatalf("two prefixes: %v", err)
	}
	if err := loadErr(t, two("stale_after 3s", "stale_after 3s")); err != nil {
		t.Fatalf("same settings: %v", err)
	}
	defer func() { _ = caddy.Stop() }()
	n := 0
	servicePool.Range(func(k, _ any) bool {
		if k.(serviceKey).prefix == heartbeat.DefaultPrefix {
			n++
		}
		return true
	})
	if n != 1 {
		t.Fatalf("%d services of cx.ha for two sites with the same settings, want one shared", n)
	}
}

// loadErr adapts and loads a Caddyfile, returning the load's error.
func loadErr(t testing.TB, caddyfile string) error {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	return caddy.Load(cfg, true)
}
