package integration

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Hostile conditions: the gateway's config reloaded every 500ms under
// load, and a flood of fake instances and garbage on the heartbeat
// subjects. Both assert the gateway's bounds (README's Security model
// section) and log what they measured.

// ------------------------------------------------------------ helpers

// startNATSMonitored is startNATS with the monitoring endpoint on
// 127.0.0.1 (/connz, ...); it returns the server and the monitor's URL.
func startNATSMonitored(t testing.TB) (*natsServer, string) {
	t.Helper()
	port, mon := freePort(t), freePort(t)
	n := &natsServer{Port: port, URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	n.proc = newProc(t, fmt.Sprintf("nats-%d", port), bins.nats,
		"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-m", strconv.Itoa(mon))
	n.Restart()
	if !waitAccepting(fmt.Sprintf("127.0.0.1:%d", mon), 10*time.Second) {
		t.Fatalf("nats-server's monitoring port %d does not accept connections", mon)
	}
	return n, fmt.Sprintf("http://127.0.0.1:%d", mon)
}

// natsConn is one client connection as /connz lists it.
type natsConn struct {
	CID  uint64 `json:"cid"`
	Name string `json:"name"`
}

// connsNamed lists the connections named name that the server at monitor
// has now.
func connsNamed(monitor, name string) ([]natsConn, error) {
	var doc struct {
		Connections []natsConn `json:"connections"`
	}
	if err := getJSON(monitor+"/connz?limit=10000", &doc); err != nil {
		return nil, err
	}
	var out []natsConn
	for _, c := range doc.Connections {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out, nil
}

// metricSample is one line of the Prometheus text format.
type metricSample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// metrics reads the admin API's /metrics.
func (g *gateway) metrics() ([]metricSample, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + g.AdminAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: status %d", resp.StatusCode)
	}
	var out []metricSample
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := metricSample{Labels: map[string]string{}}
		rest := line
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			s.Name = line[:i]
			for _, m := range labelRE.FindAllStringSubmatch(line[i+1:j], -1) {
				s.Labels[m[1]] = m[2]
			}
			rest = strings.TrimSpace(line[j+1:])
		} else {
			name, v, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			s.Name, rest = name, v
		}
		v, _, _ := strings.Cut(rest, " ")
		if s.Value, err = strconv.ParseFloat(v, 64); err != nil {
			continue
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// byLabel sums the samples of metric name by the value of label.
func byLabel(ms []metricSample, name, label string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ms {
		if s.Name == name {
			out[s.Labels[label]] += s.Value
		}
	}
	return out
}

func sum(m map[string]float64) float64 {
	var t float64
	for _, v := range m {
		t += v
	}
	return t
}

// formatCounts prints a map as k=v, sorted by key.
func formatCounts(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%.0f", k, m[k])
	}
	return b.String()
}

// rssOf reads VmRSS of process pid (bytes).
func rssOf(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %v", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// sampler runs f every `every` until stop is called.
type sampler struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startSampler(every time.Duration, f func()) *sampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			f()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *sampler) stop() { s.cancel(); <-s.done }

// --------------------------------------------- reloads under load

// TestConfigReloadsUnderLoad reloads the gateway's config every 500ms for
// 30s (alternating two Caddyfiles that differ in a response header's
// value, alternating `caddy-cx reload` and admin POST /load) under 200
// GETs/s round-robin over two instances:
//
//   - no request fails, and both configs' header values are served;
//   - the gateway keeps one NATS connection throughout: /connz of the NATS
//     server, sampled every 100ms, lists exactly one connection named
//     "caddy-cx gateway", always with the same cid (the connection is
//     shared across configs, never re-made);
//   - afterwards (load stopped, forced GC) the gateway's goroutines are
//     within +10 of their level before the reloads and its heap within
//     +25% + 4 MiB; the backends' open connections from the gateway
//     are not more than before + 10 (old configs' transports do not keep
//     their keep-alive connections).
func TestConfigReloadsUnderLoad(t *testing.T) {
	const (
		period   = 500 * time.Millisecond
		duration = 30 * time.Second
		gwName   = "caddy-cx gateway"
	)
	n, monitor := startNATSMonitored(t)
	app1 := startBackend(t, "app1", n.URL, 0)
	app2 := startBackend(t, "app2", n.URL, 0)
	config := func(v string) string {
		return roundRobinCaddyfile(n.URL, "", "\theader X-Config "+v)
	}
	gw := startGateway(t, config("a"))
	waitRoutedTo(t, gw, "app1")
	waitRoutedTo(t, gw, "app2")

	var first natsConn
	waitFor(t, 5*time.Second, "the gateway's NATS connection on /connz", func() bool {
		cs, err := connsNamed(monitor, gwName)
		if err == nil && len(cs) == 1 {
			first = cs[0]
			return true
		}
		return false
	})

	// The baseline: after a warm-up load, its client connections closed.
	base := warmBaseline(t, gw, 100, "app1", "app2")
	_, open1 := app1.conns()
	_, open2 := app2.conns()
	baseConns := open1 + open2
	baseRSS, _ := rssOf(gw.Pid())
	t.Logf("before the reloads: %s; RSS %.1f MiB; %d connections open to the backends; NATS connection cid %d",
		base, mib(baseRSS), baseConns, first.CID)

	// Load, recording which config's header each response carried and
	// whether each request went on a fresh or a reused connection.
	var seenMu sync.Mutex
	seen := map[string]int{}
	var traces reqTraces
	load := startLoadWith(t, loadEvery, func(ctx context.Context) (*http.Request, error) {
		return http.NewRequestWithContext(traces.trace(ctx), http.MethodGet, gw.URL+"/", nil)
	}, func(resp *http.Response, body []byte) error {
		if err := checkInstanceBody(resp, body); err != nil {
			return err
		}
		v := resp.Header.Get("X-Config")
		seenMu.Lock()
		seen[v]++
		seenMu.Unlock()
		if v != "a" && v != "b" {
			return fmt.Errorf("X-Config %q, want a or b", v)
		}
		return nil
	})

	// /connz every 100ms while the reloads run.
	var connzMu sync.Mutex
	var connzSamples, connzErrors int
	var connzBad []string
	connz := startSampler(100*time.Millisecond, func() {
		cs, err := connsNamed(monitor, gwName)
		connzMu.Lock()
		defer connzMu.Unlock()
		if err != nil {
			connzErrors++
			return
		}
		connzSamples++
		if len(cs) != 1 || cs[0].CID != first.CID {
			if len(connzBad) < 10 {
				connzBad = append(connzBad, fmt.Sprintf("%s: %+v", time.Now().Format("15:04:05.000"), cs))
			}
		}
	})

	var reloads, reloadErrs int
	var reloadTimes []time.Duration
	var reloadStarts []time.Time
	start := time.Now()
	ticker := time.NewTicker(period)
	last := "a"
	for i := 0; time.Since(start) < duration; i++ {
		<-ticker.C
		v := "b"
		if i%2 == 1 {
			v = "a"
		}
		began := time.Now()
		reloadStarts = append(reloadStarts, began)
		var err error
		if i%4 < 2 {
			err = gw.Reload(config(v))
		} else {
			err = gw.LoadViaAdmin(config(v))
		}
		reloadTimes = append(reloadTimes, time.Since(began))
		if err != nil {
			reloadErrs++
			if reloadErrs <= 3 {
				t.Errorf("reload %d (%s): %v", i+1, v, err)
			}
			continue
		}
		reloads++
		last = v
	}
	ticker.Stop()
	reloadEnd := time.Now()
	// The last config is served, and the load runs on a little after it.
	c := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, 5*time.Second, "the last config ("+last+") to be served", func() bool {
		resp, err := c.Get(gw.URL + "/")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == 200 && resp.Header.Get("X-Config") == last
	})
	time.Sleep(500 * time.Millisecond)
	connz.stop()
	rs := load.Stop()
	c.CloseIdleConnections()

	slices.Sort(reloadTimes)
	t.Logf("reloads: %d done, %d failed in %v (half `caddy-cx reload`, half admin POST /load); each took p50 %s, max %s",
		reloads, reloadErrs, reloadEnd.Sub(start).Round(time.Millisecond),
		ms(reloadTimes[len(reloadTimes)/2]), ms(reloadTimes[len(reloadTimes)-1]))
	t.Logf("load: %s", rs.Summary())
	seenMu.Lock()
	t.Logf("responses by X-Config: a=%d b=%d other=%d", seen["a"], seen["b"], len(rs)-len(rs.Errors())-seen["a"]-seen["b"])
	if seen["a"] == 0 || seen["b"] == 0 {
		t.Errorf("the reloads did not take effect: X-Config values served %v", seen)
	}
	seenMu.Unlock()
	fresh, reused := traces.counts()
	t.Logf("client connections: %d requests went on a freshly dialed connection, %d on a reused one", fresh, reused)
	// Go's http.Server closes, without an answer, a connection it accepted
	// just as Shutdown began (the old config's server during a reload):
	// the client sees EOF or a reset on a fresh connection. Stock Caddy
	// does the same (6 in 30,000 requests with reloads every 250ms). Such
	// errors are tolerated (bounded below); any other fails.
	var raced, other []string
	for _, r := range rs.Errors() {
		since, sinceReload := "before the first reload", time.Duration(-1)
		for _, at := range reloadStarts {
			if !at.After(r.Start) {
				sinceReload = r.Start.Sub(at)
				since = ms(sinceReload) + " after a reload began"
			}
		}
		conn := traces.describe(r.Start)
		line := fmt.Sprintf("%s; connection: %s; %s", r, conn, since)
		msg := fmt.Sprint(r.Err)
		// A dial that meets a reset was queued on the old server's
		// listener socket (SO_REUSEPORT: the kernel spreads new
		// connections over the old and the new socket) when it closed:
		// fresh by definition, whatever the trace matched by time says.
		fresh := strings.Contains(msg, "dial tcp") || conn != "reused" && !strings.HasPrefix(conn, "reused")
		shutdownRace := (strings.Contains(msg, "EOF") || strings.Contains(msg, "connection reset")) &&
			fresh && sinceReload >= 0 && sinceReload < 500*time.Millisecond
		if shutdownRace {
			raced = append(raced, line)
		} else {
			other = append(other, line)
		}
	}
	if len(raced) > 0 {
		t.Logf("%d requests met Go's server-shutdown race on a fresh connection during a reload:\n%s", len(raced), strings.Join(raced, "\n"))
	}
	// Each reload closes the old server's listener socket, and the kernel
	// resets the connections still queued on it (SO_REUSEPORT); the
	// reload also closes the clients' idle keep-alive connections, so
	// they dial anew right then. How many meet that moment depends on the
	// machine's speed (a race-built gateway on a busy 2-core machine: 9
	// in 60 reloads), not on caddy-cx: at most one per four reloads.
	if len(raced)*4 > reloads {
		t.Errorf("%d requests lost to the server-shutdown race in %d reloads, more than one per four reloads", len(raced), reloads)
	}
	if len(other) > 0 {
		if len(other) > 10 {
			other = append(other[:10], fmt.Sprintf("... and %d more", len(other)-10))
		}
		t.Errorf("%d of %d requests failed during the reloads:\n%s", len(other), len(rs), strings.Join(other, "\n"))
	}
	if reloads < int(duration/period)/2 {
		t.Errorf("only %d reloads succeeded in %v", reloads, duration)
	}

	connzMu.Lock()
	t.Logf("/connz sampled %d times during the reloads (%d unreadable); samples without exactly one %q connection with cid %d: %d",
		connzSamples, connzErrors, gwName, first.CID, len(connzBad))
	if len(connzBad) > 0 {
		t.Errorf("the gateway's NATS connection changed during the reloads (want exactly one, cid %d); samples:\n%s",
			first.CID, strings.Join(connzBad, "\n"))
	}
	if connzSamples < 100 {
		t.Errorf("only %d /connz samples were read (%d errors)", connzSamples, connzErrors)
	}
	connzMu.Unlock()
	if cs, err := connsNamed(monitor, gwName); err != nil || len(cs) != 1 || cs[0].CID != first.CID {
		t.Errorf("after the reloads /connz lists %+v (err %v); want one connection with cid %d", cs, err, first.CID)
	}

	// Back near the start. What one reload could leak (an old config's
	// watcher, sweeper and transport: goroutines, a registry of KiBs, kept
	// keep-alive connections) is multiplied by the 60 reloads, so small
	// margins suffice: +10 goroutines and +10 connections for the admin
	// server's and the load's own idle connections; heap +25% + 4 MiB for
	// allocator slack and idle connections' buffers (measured: +1 MiB).
	var after runtimeStats
	var conns int
	var err error
	goroutineLimit := base.Goroutines + 10
	heapLimit := base.HeapAlloc + base.HeapAlloc/4 + 4<<20
	settled := poll(10*time.Second, func() bool {
		after, err = gw.runtimeStats()
		if err != nil {
			return false
		}
		_, open1 := app1.conns()
		_, open2 := app2.conns()
		conns = open1 + open2
		return after.Goroutines <= goroutineLimit && after.HeapAlloc <= heapLimit && conns <= baseConns+10
	})
	afterRSS, _ := rssOf(gw.Pid())
	t.Logf("after the reloads: %s; RSS %.1f MiB; %d connections open to the backends", after, mib(afterRSS), conns)
	t.Logf("change: goroutines %+d (limit +10), heap %+.1f MiB (limit %.1f MiB in all), backend connections %+d (limit +10)",
		after.Goroutines-base.Goroutines, mib(after.HeapAlloc)-mib(base.HeapAlloc), mib(heapLimit), conns-baseConns)
	if !settled {
		if after.Goroutines > goroutineLimit {
			t.Errorf("goroutines did not come back: %d before the reloads, %d after (limit %d)",
				base.Goroutines, after.Goroutines, goroutineLimit)
		}
		if after.HeapAlloc > heapLimit {
			t.Errorf("heap did not come back: %.1f MiB before the reloads, %.1f MiB after (limit %.1f MiB)",
				mib(base.HeapAlloc), mib(after.HeapAlloc), mib(heapLimit))
		}
		if conns > baseConns+10 {
			t.Errorf("connections from the gateway to the backends: %d before the reloads, %d after (limit %d)",
				baseConns, conns, baseConns+10)
		}
	}
	if gw.exited() {
		t.Errorf("the gateway exited")
	}
}

// reqTraces records, per request, whether it went on a fresh or a reused
// client connection (the last connection it got, after the client's own
// retries).
type reqTraces struct {
	mu  sync.Mutex
	all []*reqTrace
}

type reqTrace struct {
	created time.Time
	got     bool
	reused  bool
	idle    time.Duration
}

func (ts *reqTraces) trace(ctx context.Context) context.Context {
	tr := &reqTrace{created: time.Now()}
	ts.mu.Lock()
	ts.all = append(ts.all, tr)
	ts.mu.Unlock()
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		ts.mu.Lock()
		tr.got, tr.reused, tr.idle = true, info.Reused, info.IdleTime
		ts.mu.Unlock()
	}})
}

func (ts *reqTraces) counts() (fresh, reused int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, tr := range ts.all {
		switch {
		case tr.got && tr.reused:
			reused++
		case tr.got:
			fresh++
		}
	}
	return fresh, reused
}

// describe tells the connection of the request created first at or after
// start (the load generator creates a request right after its start).
func (ts *reqTraces) describe(start time.Time) string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var best *reqTrace
	for _, tr := range ts.all {
		if !tr.created.Before(start) && (best == nil || tr.created.Before(best.created)) {
			best = tr
		}
	}
	switch {
	case best == nil || best.created.Sub(start) > 5*time.Millisecond:
		return "unknown"
	case !best.got:
		return "none obtained"
	case best.reused:
		return fmt.Sprintf("reused (idle %s)", ms(best.idle))
	}
	return "freshly dialed"
}

// ------------------------------------------------ heartbeat flood

// TestHeartbeatFloodIsBounded has a flooder (a NATS client in the test)
// publish, while one real instance serves 200 GETs/s through a gateway
// with max_instances 1000 and stale_after 2s:
//
//	(a) one heartbeat each of 100,000 distinct fake ids as fast as it can
//	    (valid, ready, priority 100, urls on 127.0.0.1 ports nobody
//	    listens on), and at the same time
//	(b) garbage at about 10 MB/s for 5s on cx.ha.hb.*: random bytes,
//	    oversized payloads (8 KiB to 256 KiB), invalid JSON, bad subjects.
//
// Asserted: no request fails and the real instance serves all of them;
// the gateway's RSS (VmRSS, sampled every 50ms) stays under 300 MiB and
// its heap after the flood (forced GC) under 64 MiB, and its goroutines
// back within +10 of the start (keep-alive connections to app1 aside); /metrics counts
// heartbeats_rejected_total with reason capacity, json and payload
// increasing; caddy_cx_instances summed over states never exceeds 1000
// (sampled every 200ms and after the flood).
func TestHeartbeatFloodIsBounded(t *testing.T) {
	const (
		fakes       = 100_000
		maxInst     = 1000
		garbageRate = 10 << 20 // bytes per second
		garbageFor  = 5 * time.Second
		rssLimit    = 300 << 20
		heapLimit   = 64 << 20
		prefix      = "cx.ha"
	)
	n := startNATS(t, 0)
	app1 := startBackend(t, "app1", n.URL, 0)
	// The gateway as shipped, without the race detector: it doubles the
	// RSS this test bounds, and it slows the gateway so much that the fakes
	// turn stale (and are evicted and replaced) before the flood is read,
	// which is another test than this one.
	gw := startGatewayBin(t, bins.caddyPlain, strings.Replace(coreCaddyfile(n.URL, "", ""), "stale_after 1s",
		fmt.Sprintf("stale_after 2s\n\t\tmax_instances %d", maxInst), 1))
	waitRoutedTo(t, gw, "app1")
	pid := gw.Pid()

	// Ports nobody listens on: picked free, then checked still refused.
	var deadPorts []int
	for len(deadPorts) < 8 {
		p := freePort(t)
		if !waitAccepting(fmt.Sprintf("127.0.0.1:%d", p), 0) {
			deadPorts = append(deadPorts, p)
		}
	}

	warm := startLoad(t, gw.URL+"/", loadEvery)
	warm.waitServed(t, 5*time.Second, "app1", 100, time.Time{})
	if errs := warm.Stop().Errors(); len(errs) > 0 {
		t.Fatalf("warm-up: %d errors:\n%s", len(errs), errs.Describe(5))
	}
	base, err := gw.runtimeStats()
	if err != nil {
		t.Fatalf("reading the gateway's runtime figures from the admin API: %v", err)
	}
	baseRSS, err := rssOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	_, baseConns := app1.conns()
	m0, err := gw.metrics()
	if err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	rej0 := byLabel(m0, "caddy_cx_heartbeats_rejected_total", "reason")
	ev0 := byLabel(m0, "caddy_cx_membership_events_total", "event")
	t.Logf("before the flood: %s; RSS %.1f MiB; %d connections open to app1; rejected so far: %s",
		base, mib(baseRSS), baseConns, formatCounts(rej0))

	// Samplers: RSS every 50ms, instances every 200ms.
	var peakRSS atomic.Uint64
	var rssErr atomic.Value
	rss := startSampler(50*time.Millisecond, func() {
		v, err := rssOf(pid)
		if err != nil {
			rssErr.Store(err.Error())
			return
		}
		if v > peakRSS.Load() {
			peakRSS.Store(v)
		}
	})
	var instMu sync.Mutex
	var peakInst float64
	var peakInstBy map[string]float64
	var metricsReads, metricsErrs int
	var metricsLatency []time.Duration
	inst := startSampler(200*time.Millisecond, func() {
		began := time.Now()
		ms, err := gw.metrics()
		took := time.Since(began)
		instMu.Lock()
		defer instMu.Unlock()
		if err != nil {
			metricsErrs++
			return
		}
		metricsReads++
		metricsLatency = append(metricsLatency, took)
		by := byLabel(ms, "caddy_cx_instances", "state")
		if s := sum(by); s > peakInst {
			peakInst, peakInstBy = s, by
		}
	})

	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 50, time.Time{})

	connect := func(name string) *nats.Conn {
		nc, err := nats.Connect(n.URL, nats.Name(name), nats.MaxReconnects(0))
		if err != nil {
			t.Fatalf("flooder: %v", err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	hbConn, junkConn := connect("flooder heartbeats"), connect("flooder garbage")

	floodStart := time.Now()
	var wg sync.WaitGroup
	// (a) 100,000 fake instances, one heartbeat each, as fast as possible.
	var hbSent, hbErrs int
	var hbTook time.Duration
	wg.Go(func() {
		started := time.Now().UTC().Format(time.RFC3339Nano)
		buf := make([]byte, 0, 512)
		for i := range fakes {
			id := fmt.Sprintf("fake%06d", i)
			buf = buf[:0]
			buf = fmt.Appendf(buf, `{"proto":1,"id":%q,"url":"http://127.0.0.1:%d","state":"ready","started_at":%q,"seq":1,"interval_ms":1000,"version":"flood","priority":100}`,
				id, deadPorts[i%len(deadPorts)], started)
			if err := hbConn.Publish(prefix+".hb."+id, buf); err != nil {
				hbErrs++
				continue
			}
			hbSent++
		}
		if err := hbConn.FlushTimeout(30 * time.Second); err != nil {
			hbErrs++
		}
		hbTook = time.Since(floodStart)
	})
	// (b) garbage at ~10 MB/s for 5s.
	sent := map[string]int{}      // by kind
	sentBytes := map[string]int{} // by kind
	var junkErrs int
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(1, 2))
		random := make([]byte, 256<<10)
		for i := range random {
			random[i] = byte(rng.UintN(256))
		}
		// valid UTF-8, over 4 KiB: a JSON-ish heartbeat with a huge field
		bigJSON := []byte(`{"proto":1,"id":"big","url":"http://127.0.0.1:1","meta":{"x":"` + strings.Repeat("x", 64<<10) + `"}}`)
		smallJunk := [][]byte{
			[]byte(`{"proto":1,"id":`),
			[]byte(`not json at all`),
			[]byte(`[1,2,3]`),
			[]byte(`{"proto":1,"id":"x","url":"http://127.0.0.1:1",}`),
			[]byte(`null`),
			[]byte(`{"proto":"1"}`),
			[]byte(`{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{`),
			[]byte(``),
		}
		pub := func(kind, subj string, data []byte) {
			if err := junkConn.Publish(subj, data); err != nil {
				junkErrs++
				return
			}
			sent[kind]++
			sentBytes[kind] += len(data)
		}
		const tick = 10 * time.Millisecond
		perTick := garbageRate * int(tick) / int(time.Second)
		// budget carries over ticks, so that a big message's excess is
		// paid for by the following ticks.
		budget := 0
		next := time.Now()
		for time.Since(floodStart) < garbageFor {
			budget += perTick
			for budget > 0 {
				switch j := rng.IntN(100); {
				case j < 10: // oversized random bytes
					size := 8<<10 + rng.IntN(len(random)-8<<10)
					off := rng.IntN(len(random) - size + 1)
					pub("oversized-random", fmt.Sprintf("%s.hb.junk%d", prefix, rng.IntN(1000)), random[off:off+size])
					budget -= size
				case j < 15: // oversized valid UTF-8
					pub("oversized-json", prefix+".hb.big", bigJSON)
					budget -= len(bigJSON)
				case j < 45: // small random bytes
					size := 1 + rng.IntN(1024)
					off := rng.IntN(len(random) - size)
					pub("random", fmt.Sprintf("%s.hb.r%d", prefix, rng.IntN(1000)), random[off:off+size])
					budget -= size
				case j < 90: // small invalid JSON / wrong shape
					d := smallJunk[rng.IntN(len(smallJunk))]
					pub("bad-json", fmt.Sprintf("%s.hb.j%d", prefix, rng.IntN(1000)), d)
					budget -= len(d) + 32
				default: // an id NATS allows in a subject but the protocol does not
					d := []byte(`{"proto":1}`)
					pub("bad-subject", prefix+".hb.bad~id!", d)
					budget -= len(d) + 32
				}
			}
			next = next.Add(tick)
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
		}
		if err := junkConn.FlushTimeout(30 * time.Second); err != nil {
			junkErrs++
		}
	})
	wg.Wait()
	floodEnd := time.Now()

	// The fakes turn stale (stale_after 2s after their one heartbeat); the
	// load runs on over that, until app1 is the only active instance.
	var activeNow float64
	if !poll(10*time.Second, func() bool {
		m, err := gw.metrics()
		if err != nil {
			return false
		}
		activeNow = byLabel(m, "caddy_cx_instances", "state")["active"]
		return activeNow == 1
	}) {
		t.Errorf("10s after the flood %.0f instances are still active; want app1 alone (the fakes' stale_after is 2s)", activeNow)
	}
	load.waitServed(t, 5*time.Second, "app1", 50, time.Now())
	rs := load.Stop()
	rss.stop()
	inst.stop()

	// Counters settle once the gateway has processed what it received.
	var m1 []metricSample
	var rej1, ev1 map[string]float64
	prev := -1.0
	poll(10*time.Second, func() bool {
		m, err := gw.metrics()
		if err != nil {
			return false
		}
		m1 = m
		rej1 = byLabel(m, "caddy_cx_heartbeats_rejected_total", "reason")
		ev1 = byLabel(m, "caddy_cx_membership_events_total", "event")
		total := sum(rej1) + ev1["join"]
		stable := total == prev
		prev = total
		if !stable {
			time.Sleep(300 * time.Millisecond)
		}
		return stable
	})
	after, err := gw.runtimeStats()
	if err != nil {
		t.Errorf("reading the gateway's runtime figures after the flood: %v", err)
	}
	// Goroutines: back to the start, but for the keep-alive connections
	// to app1 (two goroutines each) that the load's latency spikes opened
	// and the gateway keeps idle (keepalive_idle_conns_per_host 128).
	var conns int
	goroutinesBack := poll(10*time.Second, func() bool {
		after, err = gw.runtimeStats()
		if err != nil {
			return false
		}
		_, conns = app1.conns()
		return after.Goroutines-2*(conns-baseConns) <= base.Goroutines+10
	})
	afterRSS, _ := rssOf(pid)
	instNow := byLabel(m1, "caddy_cx_instances", "state")

	delta := map[string]float64{}
	for k, v := range rej1 {
		if d := v - rej0[k]; d != 0 {
			delta[k] = d
		}
	}
	evDelta := map[string]float64{}
	for k, v := range ev1 {
		if d := v - ev0[k]; d != 0 {
			evDelta[k] = d
		}
	}
	var junkMsgs, junkBytes int
	for k := range sent {
		junkMsgs += sent[k]
		junkBytes += sentBytes[k]
	}
	junkSecs := floodEnd.Sub(floodStart).Seconds()

	t.Logf("flood (a): %d heartbeats of distinct fake ids sent (%d publish errors) in %v (%.0f/s)",
		hbSent, hbErrs, hbTook.Round(time.Millisecond), float64(hbSent)/hbTook.Seconds())
	t.Logf("flood (b): %d garbage messages, %.1f MB in %.1fs (%.1f MB/s), %d publish errors; by kind: %v; bytes by kind: %v",
		junkMsgs, float64(junkBytes)/1e6, junkSecs, float64(junkBytes)/1e6/junkSecs, junkErrs, sent, sentBytes)
	t.Logf("rejected during the flood, by reason: %s (total %.0f)", formatCounts(delta), sum(delta))
	t.Logf("membership events during the flood: %s", formatCounts(evDelta))
	fakeAccounted := delta["capacity"] + evDelta["join"]
	t.Logf("fake heartbeats accounted for (capacity rejections + joins): %.0f of %d (%.0f not counted: dropped before the registry or other reasons)",
		fakeAccounted, hbSent, float64(hbSent)-fakeAccounted)
	garbageReasons := delta["json"] + delta["payload"] + delta["subject"] + delta["proto"] + delta["id"] + delta["url"] + delta["state"] + delta["started_at"] + delta["seq"] + delta["interval_ms"] + delta["meta"]
	t.Logf("garbage rejections (every reason but capacity and rate): %.0f of %d garbage messages sent", garbageReasons, junkMsgs)
	instMu.Lock()
	slices.Sort(metricsLatency)
	var p50, pmax time.Duration
	if len(metricsLatency) > 0 {
		p50, pmax = metricsLatency[len(metricsLatency)/2], metricsLatency[len(metricsLatency)-1]
	}
	t.Logf("caddy_cx_instances: peak total %.0f (%s) over %d samples (%d unreadable; /metrics took p50 %s, max %s); after: %s",
		peakInst, formatCounts(peakInstBy), metricsReads, metricsErrs, ms(p50), ms(pmax), formatCounts(instNow))
	t.Logf("gateway RSS: %.1f MiB before, peak %.1f MiB (limit %.0f MiB), %.1f MiB after", mib(baseRSS), mib(peakRSS.Load()), mib(rssLimit), mib(afterRSS))
	t.Logf("gateway after the flood (forced GC): %s, %d connections open to app1 (before: %s, %d connections); heap limit %.0f MiB",
		after, conns, base, baseConns, mib(heapLimit))
	t.Logf("load: %s", rs.Summary())

	if hbSent != fakes {
		t.Errorf("the flooder sent %d of %d fake heartbeats (%d errors)", hbSent, fakes, hbErrs)
	}
	if mbps := float64(junkBytes) / 1e6 / junkSecs; mbps < 5 {
		t.Errorf("the garbage flood reached only %.1f MB/s; the test machine could not produce the load", mbps)
	}
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed during the flood; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	if by := rs.ByInstance(); by["app1"] != len(rs) {
		t.Errorf("app1 served %d of %d requests (%v); want all", by["app1"], len(rs), by)
	}
	if v, ok := rssErr.Load().(string); ok {
		t.Errorf("reading the gateway's RSS: %s", v)
	}
	if p := peakRSS.Load(); p > rssLimit {
		t.Errorf("the gateway's RSS peaked at %.1f MiB; limit %.0f MiB", mib(p), mib(rssLimit))
	}
	if !goroutinesBack {
		t.Errorf("goroutines did not come back after the flood: %d before, %d after, of which %d for %d more keep-alive connections to app1 (limit %d + those)",
			base.Goroutines, after.Goroutines, 2*(conns-baseConns), conns-baseConns, base.Goroutines+10)
	}
	if after.HeapAlloc > heapLimit {
		t.Errorf("the gateway's heap after the flood is %.1f MiB; limit %.0f MiB", mib(after.HeapAlloc), mib(heapLimit))
	}
	for _, reason := range []string{"capacity", "json", "payload"} {
		if delta[reason] <= 0 {
			t.Errorf("caddy_cx_heartbeats_rejected_total{reason=%q} did not increase during the flood (before %.0f, after %.0f)",
				reason, rej0[reason], rej1[reason])
		}
	}
	if peakInst > maxInst || sum(instNow) > maxInst {
		t.Errorf("caddy_cx_instances summed over states: peak %.0f, after %.0f; want at most max_instances %d",
			peakInst, sum(instNow), maxInst)
	}
	if metricsReads == 0 {
		t.Errorf("/metrics could not be read during the flood (%d errors)", metricsErrs)
	}
	// Every message on the heartbeat subjects is applied or refused and
	// counted (README: "dropped, counted and logged"; max_instances: "the
	// excess is rejected and counted"). Each fake id is new: its one
	// heartbeat is a join or a rejection; each garbage message a
	// rejection. So joins plus rejections of every reason equal what was
	// sent: a message the gateway lost uncounted (a slow consumer's drop,
	// say) makes the sums differ.
	if got, want := sum(delta)+evDelta["join"], float64(hbSent+junkMsgs); got != want {
		t.Errorf("joins + rejections counted during the flood: %.0f; want one for each of the %d fake heartbeats and %d garbage messages (%.0f): %.0f lost uncounted; slow consumer reports: %s",
			got, hbSent, junkMsgs, want, want-got, slowConsumerReports(gw, n))
	}
	// ... and none is counted twice.
	if fakeAccounted > float64(hbSent) {
		t.Errorf("%.0f joins and capacity rejections for %d fake heartbeats", fakeAccounted, hbSent)
	}
	if garbageReasons > float64(junkMsgs) || delta["subject"] > float64(sent["bad-subject"]) {
		t.Errorf("%.0f garbage rejections for %d garbage messages, %.0f for reason subject for %d sent on an invalid subject",
			garbageReasons, junkMsgs, delta["subject"], sent["bad-subject"])
	}
	if gw.exited() {
		t.Errorf("the gateway exited")
	}
	checkRejectionLogRate(t, gw, delta)
}

// slowConsumerReports lists what the gateway's and the NATS server's
// logs say about messages dropped for a slow consumer (client side:
// nats.go's pending limits; server side: the server's write deadline).
func slowConsumerReports(gw *gateway, n *natsServer) string {
	var out []string
	for _, p := range []*proc{gw.proc, n.proc} {
		for line := range strings.SplitSeq(p.Log(), "\n") {
			if strings.Contains(strings.ToLower(line), "slow consumer") {
				out = append(out, p.name+": "+truncate(line, 300))
			}
		}
	}
	if len(out) == 0 {
		return "none in the gateway's or the NATS server's log"
	}
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("... %d lines in all", len(out)))
	}
	return strings.Join(out, "\n")
}

// rejectLogEvery is how often the gateway logs a rejection of one reason
// (caddymodule's eventlog).
const rejectLogEvery = 5 * time.Second

// checkRejectionLogRate checks that the gateway logged "heartbeat
// rejected" at most once per rejectLogEvery per reason, and at least once
// for each reason counted in rejected.
func checkRejectionLogRate(t testing.TB, gw *gateway, rejected map[string]float64) {
	t.Helper()
	byReason := map[string][]time.Time{}
	lines := 0
	for _, e := range logEntries(gw.logPath) {
		if e.Str("msg") == "heartbeat rejected" {
			lines++
			byReason[e.Str("reason")] = append(byReason[e.Str("reason")], e.Time())
		}
	}
	t.Logf("gateway log: %d \"heartbeat rejected\" lines for %d reasons, %d bytes in all", lines, len(byReason), len(gw.Log()))
	for reason, times := range byReason {
		for i := 1; i < len(times); i++ {
			// Log timestamps are taken just after the limiter's clock: allow
			// their scheduling jitter, not a second line.
			if gap := times[i].Sub(times[i-1]); gap < rejectLogEvery-100*time.Millisecond {
				t.Errorf("rejections for reason %q logged %s apart (lines %d and %d); want at most one per %v",
					reason, ms(gap), i, i+1, rejectLogEvery)
				break
			}
		}
	}
	for reason, n := range rejected {
		if n > 0 && len(byReason[reason]) == 0 {
			t.Errorf("%.0f heartbeats rejected for reason %q, none logged", n, reason)
		}
	}
}
