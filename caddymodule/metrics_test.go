package caddymodule

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// scrape reads a Prometheus text exposition into series -> value, keyed
// as printed (`name{label="v",...}`), keeping only caddy_cx_ series.
func scrape(t testing.TB, url string) map[string]float64 {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		// A reload shuts the old server down and with it the kept-alive
		// connection this GET may have reused: one fresh try.
		client.CloseIdleConnections()
		resp, err = client.Get(url)
	}
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: status %d", url, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_cx_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// waitMetric polls the metrics until series has value want (-1: absent).
func waitMetric(t testing.TB, url, series string, want float64) map[string]float64 {
	t.Helper()
	var got map[string]float64
	eventually(t, 5*time.Second, func() bool {
		got = scrape(t, url)
		v, ok := got[series]
		if want == -1 {
			return !ok
		}
		return ok && v == want
	}, fmt.Sprintf("%s == %v", series, want))
	return got
}

func expectMetric(t testing.TB, m map[string]float64, series string, want float64) {
	t.Helper()
	if got, ok := m[series]; !ok || got != want {
		t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
	}
}

const metricsSite = `http://127.0.0.1:{PORT} {
	metrics /metrics
	cx_proxy {
		stale_after {STALE}
		forget_after 1500ms
		fail_timeout 1m
		header_instance
	}
}`

func TestMetricsFollowMembershipRequestsAndReloads(t *testing.T) {
	natsURL := startNATS(t)
	site := strings.ReplaceAll(metricsSite, "{STALE}", "600ms")
	base := gateway(t, natsURL, site)
	metrics := base + "/metrics"
	nc := connect(t, natsURL)

	m := scrape(t, metrics)
	expectMetric(t, m, `caddy_cx_nats_connected`, 1)
	expectMetric(t, m, `caddy_cx_instances{service="cx.ha",state="active"}`, 0)
	expectMetric(t, m, `caddy_cx_membership_events_total{event="join",service="cx.ha"}`, 0)

	app1, app2 := startBackend(t, "app1"), startBackend(t, "app2")
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	i2 := newInstance(t, nc, "app2", app2.url, 1)
	i1.beat(heartbeat.StateReady)
	i2.beat(heartbeat.StateReady)
	stop1, stop2 := i1.keepBeating(), i2.keepBeating()
	defer stop1()
	defer stop2()

	m = waitMetric(t, metrics, `caddy_cx_instances{service="cx.ha",state="active"}`, 2)
	expectMetric(t, m, `caddy_cx_membership_events_total{event="join",service="cx.ha"}`, 2)
	expectMetric(t, m, `caddy_cx_primary{instance_id="app1",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_primary{instance_id="app2",service="cx.ha"}`, 0)
	if age, ok := m[`caddy_cx_heartbeat_age_seconds{instance_id="app1",service="cx.ha"}`]; !ok || age < 0 || age > 1 {
		t.Errorf("heartbeat age of app1 = %v (present %v), want 0 to 1s", age, ok)
	}

	// requests are counted per instance and code class; the optional
	// header names the instance.
	for range 3 {
		resp, err := client.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get(DefaultInstanceHeader); got != "app1" {
			t.Fatalf("%s = %q, want app1", DefaultInstanceHeader, got)
		}
	}
	m = scrape(t, metrics)
	expectMetric(t, m, `caddy_cx_upstream_requests_total{code_class="2xx",instance_id="app1",service="cx.ha"}`, 3)

	// a 503 of app1 is retried on app2: a retry with its reason; passive
	// health then passes app1 over, so app2 is primary: a failover.
	app1.failing.Store(true)
	if got, code := get(t, "GET", base); got != "app2" || code != http.StatusOK {
		t.Fatalf("GET with app1 failing: served by %q status %d, want app2 200", got, code)
	}
	m = scrape(t, metrics)
	expectMetric(t, m, `caddy_cx_retries_total{reason="status_5xx",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_upstream_requests_total{code_class="5xx",instance_id="app1",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_upstream_requests_total{code_class="2xx",instance_id="app2",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_primary{instance_id="app2",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_primary{instance_id="app1",service="cx.ha"}`, 0)
	expectMetric(t, m, `caddy_cx_failovers_total{service="cx.ha"}`, 1)

	// a malformed heartbeat is rejected and counted by reason.
	i1.raw(heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, "bogus"), []byte(`{"proto":1}`))
	m = waitMetric(t, metrics, `caddy_cx_heartbeats_rejected_total{reason="id",service="cx.ha"}`, 1)
	rejected := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "caddy_cx_heartbeats_rejected_total{") {
			rejected += v
		}
	}
	if rejected != 1 {
		t.Errorf("heartbeats_rejected_total sums to %v, want 1: %v", rejected, m)
	}

	// app1 dies: stale, then forgotten with its per-instance series.
	stop1()
	m = waitMetric(t, metrics, `caddy_cx_instances{service="cx.ha",state="stale"}`, 1)
	expectMetric(t, m, `caddy_cx_instances{service="cx.ha",state="active"}`, 1)
	expectMetric(t, m, `caddy_cx_membership_events_total{event="stale",service="cx.ha"}`, 1)
	m = waitMetric(t, metrics, `caddy_cx_heartbeat_age_seconds{instance_id="app1",service="cx.ha"}`, -1)
	for k := range m {
		if strings.Contains(k, `instance_id="app1"`) {
			t.Errorf("series of forgotten app1 still exported: %s", k)
		}
	}
	expectMetric(t, m, `caddy_cx_membership_events_total{event="forget",service="cx.ha"}`, 1)

	// a reload that changes the service's settings (applied to the live
	// service in place) keeps the counters and registers nothing twice.
	loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n%s\n", natsURL,
		strings.ReplaceAll(strings.ReplaceAll(metricsSite, "{STALE}", "700ms"), "{PORT}", strings.TrimPrefix(base, "http://127.0.0.1:"))))
	m = waitMetric(t, metrics, `caddy_cx_instances{service="cx.ha",state="active"}`, 1)
	expectMetric(t, m, `caddy_cx_membership_events_total{event="join",service="cx.ha"}`, 2)
	expectMetric(t, m, `caddy_cx_retries_total{reason="status_5xx",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_upstream_requests_total{code_class="2xx",instance_id="app2",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_failovers_total{service="cx.ha"}`, 1)

	// app2 leaves: nothing is active any more.
	stop2()
	i2.beat(heartbeat.StateLeaving)
	m = waitMetric(t, metrics, `caddy_cx_instances{service="cx.ha",state="left"}`, 1)
	expectMetric(t, m, `caddy_cx_instances{service="cx.ha",state="active"}`, 0)
	expectMetric(t, m, `caddy_cx_membership_events_total{event="leave",service="cx.ha"}`, 1)
	expectMetric(t, m, `caddy_cx_primary{instance_id="app2",service="cx.ha"}`, 0)
}

func TestHeaderInstanceOption(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"cx {\n header_instance\n}", DefaultInstanceHeader, ""},
		{"cx {\n header_instance X-Served-By\n}", "X-Served-By", ""},
		{"cx {\n header_instance a b\n}", "", "at most one"},
		{"cx {\n header_instance X:Y\n}", "", "not a valid header name"},
	} {
		u := new(Upstreams)
		err := u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || u.HeaderInstance != tc.want {
			t.Errorf("%q: header %q, error %v; want %q", tc.in, u.HeaderInstance, err, tc.want)
		}
	}
}
