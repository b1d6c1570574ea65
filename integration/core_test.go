package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// Load of the core scenarios: one GET every 5ms, 200 requests/s.
const loadEvery = 5 * time.Millisecond

// startCore starts NATS, app1 (priority 0), app2 (priority 1) and a
// gateway with coreCaddyfile, and waits until the gateway routes to app1
// and knows app2.
func startCore(t *testing.T, globalExtra, siteExtra string) (*natsServer, *backend, *backend, *gateway) {
	t.Helper()
	n := startNATS(t, 0)
	app1 := startBackend(t, "app1", n.URL, 0)
	app2 := startBackend(t, "app2", n.URL, 1)
	gw := startGateway(t, coreCaddyfile(n.URL, globalExtra, siteExtra))
	waitRoutedTo(t, gw, "app1")
	gw.waitLog(t, 5*time.Second, "app2 joins", membershipEvent("join", "app2", time.Time{}))
	return n, app1, app2, gw
}

// waitRoutedTo waits until a GET through the gateway is served by id.
func waitRoutedTo(t testing.TB, gw *gateway, id string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	var last string
	if !poll(10*time.Second, func() bool {
		inst, status, err := get(c, gw.URL+"/")
		last = fmt.Sprintf("instance %q, status %d, error %v", inst, status, err)
		return err == nil && status == 200 && inst == id
	}) {
		t.Fatalf("timed out after 10s waiting for the gateway to route to %s; last GET: %s", id, last)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }

// TestFailoverOnSIGKILL kills the preferred instance with SIGKILL under
// load: no client sees an error, the backup takes over, the dead instance
// turns stale within stale_after, and its restart takes the traffic back.
func TestFailoverOnSIGKILL(t *testing.T) {
	proxyLog := filepath.Join(t.TempDir(), "proxy-debug.log")
	// reverse_proxy's debug log (every upstream round trip, with its
	// error) goes to its own file: it shows the attempts against the dead
	// instance, which clients do not see.
	global := fmt.Sprintf("\tlog proxydebug {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t\tinclude http.handlers.reverse_proxy\n\t}", proxyLog)
	n, app1, _, gw := startCore(t, global, "")
	requireAdminAPI(t, gw)

	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 200, time.Time{})
	if pre := load.Results(); pre.ByInstance()["app2"] > 0 {
		t.Errorf("before the kill, app2 (priority 1) served %d requests while app1 (priority 0) was up", pre.ByInstance()["app2"])
	}

	killAt := time.Now()
	app1.Kill()

	waitFor(t, 5*time.Second, "/cx/instances to show app1 stale", func() bool {
		st, _ := gw.instanceState("app1")
		return st == "stale"
	})
	adminStale := time.Since(killAt)
	stale := gw.waitLog(t, 5*time.Second, "app1 turns stale", membershipEvent("stale", "app1", killAt))
	staleAt := stale.Time()
	load.waitServed(t, 5*time.Second, "app2", 200, staleAt)

	restartAt := time.Now()
	startBackend(t, "app1", n.URL, 0, "--listen", app1.Addr)
	gw.waitLog(t, 5*time.Second, "app1's restart", func(e logEntry) bool {
		return (e.Str("event") == "restart" || e.Str("event") == "join") && e.Str("instance") == "app1" && e.Time().After(restartAt)
	})
	// The restart announcement re-admits app1 as new (PROTOCOL.md): what
	// the gateway held against the dead process (e.g. passive-health
	// failures at the same address) must not keep the new one out.
	if !poll(5*time.Second, func() bool { return load.Results().Since(restartAt).ByInstance()["app1"] >= 100 }) {
		t.Errorf("restarted app1 (same id and address, priority 0) did not get 100 requests within 5s of its start: %s",
			load.Results().Since(restartAt).Summary())
	}
	rs := load.Stop()

	t.Logf("load: %s", rs.Summary())
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}

	// While app1 was dead, app2 served everything.
	dead := rs.Since(killAt).Before(restartAt)
	if got := dead.ByInstance()["app1"]; got > 0 {
		t.Errorf("%d requests started after app1's SIGKILL were answered as app1 before it restarted", got)
	}
	if dead.ByInstance()["app2"] == 0 {
		t.Errorf("app2 served nothing after app1's SIGKILL")
	}

	// Staleness within stale_after (1s) of the last heartbeat (at most one
	// interval, 200ms, before the kill), noticed by the next sweep (50ms);
	// 450ms more for -race and scheduling on a loaded machine.
	staleDelay := staleAt.Sub(killAt)
	if staleDelay > staleAfter+500*time.Millisecond {
		t.Errorf("app1 turned stale %s after SIGKILL; want within stale_after (%v) + 500ms", ms(staleDelay), staleAfter)
	}

	// Once restarted, app1 (priority 0) takes all the traffic back: the
	// requests that started 300ms after its first response are all its.
	first := firstServed(rs.Since(restartAt), "app1")
	if !first.Start.IsZero() {
		settled := rs.Since(first.Start.Add(300 * time.Millisecond))
		if got := settled.ByInstance()["app2"]; got > 0 {
			t.Errorf("after app1's restart (first served %s after it), app2 still served %d of %d requests",
				ms(first.Start.Sub(restartAt)), got, len(settled))
		}
	}

	// What the gateway did meanwhile, from reverse_proxy's debug log:
	// round trips to app1's address that failed after the kill.
	var failed []time.Time
	for _, e := range logEntries(proxyLog) {
		if e.Str("msg") == "upstream roundtrip" && e.Str("upstream") == app1.Addr && e.Str("error") != "" &&
			!e.Time().Before(killAt) && e.Time().Before(restartAt) {
			failed = append(failed, e.Time())
		}
	}
	attempts := len(failed)
	var firstAttempt, lastAttempt time.Time
	for _, at := range failed {
		if firstAttempt.IsZero() || at.Before(firstAttempt) {
			firstAttempt = at
		}
		if at.After(lastAttempt) {
			lastAttempt = at
		}
	}
	t.Run("passive_health_dial_errors", func(t *testing.T) {
		// Passive health (README: "counts what nginx counts": connection
		// errors) takes the dead instance out after its first connection
		// errors, long before stale_after: new requests stop being tried
		// on it. Only attempts already under way may still fail.
		const passiveWindow = 500 * time.Millisecond
		// At 200 requests/s some were under way on app1 or sent to it
		// right after the kill: they must show as failed round trips. None
		// means the log no longer says what this check reads (Caddy
		// renamed its debug message, or the log is not configured).
		if attempts == 0 {
			roundTrips := 0
			for _, e := range logEntries(proxyLog) {
				if e.Str("msg") == "upstream roundtrip" {
					roundTrips++
				}
			}
			t.Fatalf("no failed attempts against app1 (%s) in the gateway's debug log %s, which has %d \"upstream roundtrip\" entries in all: this check cannot see the dead instance's connection errors",
				app1.Addr, proxyLog, roundTrips)
		}
		if late := countAfter(failed, firstAttempt.Add(passiveWindow)); late > 0 {
			t.Errorf("the gateway kept trying dead app1 for %s after its first connection error (%d of %d failed attempts came more than %s after the first; the last %s after SIGKILL, staleness at %s): connection errors do not take an instance out of rotation",
				ms(lastAttempt.Sub(firstAttempt)), late, attempts, ms(passiveWindow), ms(lastAttempt.Sub(killAt)), ms(staleAt.Sub(killAt)))
		}
	})
	window := rs.Since(killAt).Before(staleAt)
	t.Logf("SIGKILL -> app1 stale in the gateway's log: %s (stale_after 1s, heartbeat interval 200ms)", ms(staleDelay))
	t.Logf("SIGKILL -> /cx/instances shows app1 stale: %s", ms(adminStale))
	if attempts > 0 {
		t.Logf("SIGKILL -> last failed attempt against app1: %s; %d failed attempts retried on app2 (gateway debug log)",
			ms(lastAttempt.Sub(killAt)), attempts)
	} else {
		t.Logf("no failed attempts against app1 found in the gateway's debug log (%s)", proxyLog)
	}
	t.Logf("requests started between SIGKILL and staleness: %s", window.Summary())
	if !first.Start.IsZero() {
		t.Logf("app1 restart -> first request served by it: %s", ms(first.Start.Sub(restartAt)))
	}
}

// countAfter counts the times after t.
func countAfter(times []time.Time, t time.Time) int {
	n := 0
	for _, at := range times {
		if at.After(t) {
			n++
		}
	}
	return n
}

// firstServed returns the earliest-started successful request served by
// id (zero if none).
func firstServed(rs results, id string) result {
	for _, r := range rs {
		if r.OK() && r.Instance == id {
			return r
		}
	}
	return result{}
}

// TestLeavingStopsTraffic stops the preferred instance with SIGTERM under
// load: it announces leaving, the gateway stops sending it new requests at
// once (not after stale_after), requests it already has finish, and no
// client sees an error.
func TestLeavingStopsTraffic(t *testing.T) {
	_, app1, _, gw := startCore(t, "", "")
	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 100, time.Time{})

	// Requests in flight on app1 when it is told to stop.
	const slowN, slowMS = 5, 800
	slow := make(chan result, slowN)
	client := &http.Client{Timeout: 10 * time.Second}
	for range slowN {
		go func() { slow <- fetch(client, fmt.Sprintf("%s/slow?ms=%d", gw.URL, slowMS)) }()
	}
	waitFor(t, 5*time.Second, fmt.Sprintf("%d slow requests in flight on app1", slowN), func() bool {
		return backendCount(app1, "/slow") >= slowN
	})

	termAt := time.Now()
	app1.Term()
	leave := gw.waitLog(t, 3*time.Second, "app1 leaves", membershipEvent("leave", "app1", termAt))
	code, exited := app1.Wait(10 * time.Second)
	exitAt := time.Now()
	if !exited {
		t.Fatalf("app1 did not exit within 10s of SIGTERM")
	}
	if code != 0 {
		t.Errorf("app1 exited with code %d after SIGTERM, want 0", code)
	}
	load.waitServed(t, 5*time.Second, "app2", 200, termAt)
	rs := load.Stop()

	t.Logf("load: %s", rs.Summary())
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	var slowEnd time.Time
	for range slowN {
		r := <-slow
		if !r.OK() || r.Instance != "app1" {
			t.Errorf("in-flight slow request on app1 did not finish there: %s", r)
		}
		slowEnd = maxTime(slowEnd, r.End())
	}

	// leaving is published on SIGTERM and reaches the gateway in one NATS
	// hop (measured: 1-2ms); 500ms is scheduling slack, not protocol.
	leaveDelay := leave.Time().Sub(termAt)
	if leaveDelay > 500*time.Millisecond {
		t.Errorf("gateway saw app1 leave %s after SIGTERM; want milliseconds", ms(leaveDelay))
	}
	// Requests that reached the gateway after it processed the leave go
	// elsewhere; 200ms covers the client-to-gateway path under -race.
	if late := rs.Since(leave.Time().Add(200 * time.Millisecond)).ByInstance()["app1"]; late > 0 {
		t.Errorf("%d requests started more than 200ms after the gateway saw app1 leave were still served by app1", late)
	}
	if rs.Since(termAt).ByInstance()["app2"] == 0 {
		t.Errorf("app2 served nothing after app1 left")
	}
	last, ok := rs.LastServed("app1")
	if ok {
		t.Logf("SIGTERM -> last response served by app1: %s (that request started at %s)",
			ms(last.End().Sub(termAt)), ms(last.Start.Sub(termAt)))
	}
	t.Logf("SIGTERM -> last of the %d in-flight %dms requests answered by app1: %s", slowN, slowMS, ms(slowEnd.Sub(termAt)))
	t.Logf("SIGTERM -> gateway logs app1 leaving: %s; SIGTERM -> app1 exited: %s", ms(leaveDelay), ms(exitAt.Sub(termAt)))
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// fetch GETs url and reports it as a load result.
func fetch(c *http.Client, url string) result {
	r := result{Start: time.Now()}
	resp, err := c.Get(url)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		r.Status = resp.StatusCode
		r.Instance = resp.Header.Get("X-Instance")
	}
	r.Err = err
	r.Latency = time.Since(r.Start)
	return r
}

// backendCount is how many requests for path b has served (-1 if it
// cannot tell).
func backendCount(b *backend, path string) int {
	resp, err := http.Get(b.URL + "/admin/count")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var counts map[string]int
	if json.NewDecoder(resp.Body).Decode(&counts) != nil {
		return -1
	}
	return counts[path]
}

// TestNATSOutageUnderLoad kills the NATS server for 5s under load: routing
// continues on the known members (nobody turns stale: silence proves
// nothing while the gateway is disconnected), no request fails, and after
// NATS returns on the same port a new instance is routed to. The loss and
// the return are logged once each (README), and every view of the
// connection follows it: caddy_cx_nats_connected, nats_connected of the
// admin API and of the status page's JSON, and the page's warning.
func TestNATSOutageUnderLoad(t *testing.T) {
	const outage = 5 * time.Second
	n, _, _, gw := startCore(t, "", "\tcx_status /ha")
	requireAdminAPI(t, gw)
	waitNATSViews(t, gw, true, 5*time.Second)
	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 100, time.Time{})

	killAt := time.Now()
	n.Kill()
	// The kernel closes the dead server's sockets: the client reads EOF at
	// once, and every view says so within a second.
	downSeen := waitNATSViews(t, gw, false, time.Second)
	t.Logf("NATS killed -> every view shows the gateway disconnected: %s", ms(downSeen.Sub(killAt)))
	// The outage lasts `outage` whatever happens; meanwhile the admin API
	// keeps listing both instances as active and every view of the
	// connection keeps saying it is down.
	var problems []string
	for time.Since(killAt) < outage {
		at := "+" + ms(time.Since(killAt))
		for _, id := range []string{"app1", "app2"} {
			if st, ok := gw.instanceState(id); !ok {
				problems = append(problems, fmt.Sprintf("/cx/instances unreadable at %s", at))
			} else if st != "active" {
				problems = append(problems, fmt.Sprintf("/cx/instances shows %s %s at %s", id, st, at))
			}
		}
		if v := gw.natsViews(); !v.all(false) {
			problems = append(problems, fmt.Sprintf("at %s: %s", at, v))
		}
		time.Sleep(100 * time.Millisecond)
	}
	restartAt := time.Now()
	n.Restart()
	// nats.go retries every 250ms plus up to 1s of jitter.
	upSeen := waitNATSViews(t, gw, true, 3*time.Second)
	t.Logf("NATS restarted -> every view shows the gateway connected: %s", ms(upSeen.Sub(restartAt)))

	startBackend(t, "app3", n.URL, -1)
	load.waitServed(t, 15*time.Second, "app3", 50, restartAt)
	rs := load.Stop()

	t.Logf("load: %s", rs.Summary())
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	during := rs.Since(killAt).Before(restartAt)
	if by := during.ByInstance(); by["app1"] != len(during) {
		t.Errorf("during the NATS outage app1 served %d of %d requests (%v); want all: members must be kept as they were",
			by["app1"], len(during), by)
	}
	for _, id := range []string{"app1", "app2"} {
		if e, ok := gw.findLog(func(e logEntry) bool {
			return e.Str("event") == "stale" && e.Str("instance") == id && !e.Time().Before(killAt) && e.Time().Before(restartAt)
		}); ok {
			t.Errorf("%s turned stale %s into the NATS outage; the registry must freeze while disconnected", id, ms(e.Time().Sub(killAt)))
		}
	}
	if len(problems) > 0 {
		t.Errorf("during the outage (%d problems):\n%s", len(problems), strings.Join(problems[:min(len(problems), 10)], "\n"))
	}
	lost, re := checkNATSLossLogged(t, gw, killAt, restartAt)
	t.Logf("NATS killed -> gateway logs the loss: %s; NATS restarted -> gateway logs reconnecting: %s",
		ms(lost.Sub(killAt)), ms(re.Sub(restartAt)))
	if first := firstServed(rs.Since(restartAt), "app3"); !first.Start.IsZero() {
		t.Logf("NATS back -> app3 (started after it, priority -1) first served: %s", ms(first.Start.Sub(restartAt)))
	}
	for _, e := range logEntries(gw.logPath) {
		if e.Str("event") == "stale" && !e.Time().Before(restartAt) {
			t.Logf("note: after NATS returned, %s turned stale at +%s (its own reconnect came later than stale_after after the gateway's)",
				e.Str("instance"), ms(e.Time().Sub(restartAt)))
		}
	}
}

// requireAdminAPI fails the test unless the gateway's admin API answers
// GET /cx/instances: the checks that read it must not switch themselves
// off.
func requireAdminAPI(t testing.TB, gw *gateway) {
	t.Helper()
	if _, ok := gw.Instances(); !ok {
		t.Fatalf("GET http://%s/cx/instances does not answer with the instances' JSON", gw.AdminAddr)
	}
}

// Log messages of the gateway's NATS connection (caddymodule/natslink.go).
const (
	msgNATSLost        = "lost NATS connection"
	msgNATSReconnected = "reconnected to NATS"
)

// checkNATSLossLogged checks that the gateway logged losing NATS exactly
// once, after lostAfter, and reconnecting exactly once, after
// backAfter, and returns when.
func checkNATSLossLogged(t testing.TB, gw *gateway, lostAfter, backAfter time.Time) (lost, back time.Time) {
	t.Helper()
	// The reconnect line may still be on its way.
	poll(3*time.Second, func() bool {
		_, ok := gw.findLog(func(e logEntry) bool { return strings.HasPrefix(e.Str("msg"), msgNATSReconnected) })
		return ok
	})
	var losses, returns []logEntry
	for _, e := range logEntries(gw.logPath) {
		switch msg := e.Str("msg"); {
		case strings.HasPrefix(msg, msgNATSLost):
			losses = append(losses, e)
		case strings.HasPrefix(msg, msgNATSReconnected):
			returns = append(returns, e)
		}
	}
	if len(losses) != 1 || len(returns) != 1 {
		t.Errorf("the gateway logged %q %d times and %q %d times; want once each (README)",
			msgNATSLost, len(losses), msgNATSReconnected, len(returns))
	}
	if len(losses) > 0 {
		lost = losses[0].Time()
		if lost.Before(lostAfter) {
			t.Errorf("%q logged %s before NATS went away", msgNATSLost, ms(lostAfter.Sub(lost)))
		}
	}
	if len(returns) > 0 {
		back = returns[0].Time()
		if back.Before(backAfter) {
			t.Errorf("%q logged %s before NATS came back", msgNATSReconnected, ms(backAfter.Sub(back)))
		}
	}
	return lost, back
}

// natsViews is what the gateway shows of its NATS connection, each as
// "connected", "disconnected" or why it could not be read.
type natsViews struct {
	metric  string // caddy_cx_nats_connected on the admin API's /metrics
	admin   string // nats_connected of GET /cx/instances
	page    string // nats_connected of the status page's JSON (cx_status at /ha)
	warning string // whether the page's JSON warns that NATS is lost
}

func (v natsViews) String() string {
	return fmt.Sprintf("caddy_cx_nats_connected %s, /cx/instances %s, status page %s, page warning %s", v.metric, v.admin, v.page, v.warning)
}

// all reports whether every view says connected (or, with false, that
// every one says disconnected and the page warns).
func (v natsViews) all(connected bool) bool {
	want, warn := "connected", "absent"
	if !connected {
		want, warn = "disconnected", "present"
	}
	return v.metric == want && v.admin == want && v.page == want && v.warning == warn
}

func connectedWord(b bool) string {
	if b {
		return "connected"
	}
	return "disconnected"
}

// natsViews reads the gateway's views of its NATS connection; the site
// must serve cx_status at /ha.
func (g *gateway) natsViews() natsViews {
	var v natsViews
	if samples, err := g.metrics(); err != nil {
		v.metric = err.Error()
	} else {
		v.metric = "missing"
		for _, s := range samples {
			if s.Name == "caddy_cx_nats_connected" {
				v.metric = map[float64]string{0: "disconnected", 1: "connected"}[s.Value]
				if v.metric == "" {
					v.metric = fmt.Sprintf("value %v", s.Value)
				}
			}
		}
	}
	if doc, ok := g.Instances(); !ok || len(doc.Services) != 1 {
		v.admin = fmt.Sprintf("unreadable (%d services)", len(doc.Services))
	} else {
		v.admin = connectedWord(doc.Services[0].NATSConnected)
	}
	var page struct {
		Services []struct {
			NATSConnected bool     `json:"nats_connected"`
			Warnings      []string `json:"warnings"`
		} `json:"services"`
	}
	if err := getJSONAccept(g.URL+"/ha", &page); err != nil || len(page.Services) != 1 {
		v.page = fmt.Sprintf("unreadable (%v, %d services)", err, len(page.Services))
		v.warning = "unknown"
	} else {
		v.page = connectedWord(page.Services[0].NATSConnected)
		v.warning = "absent"
		for _, w := range page.Services[0].Warnings {
			if strings.Contains(w, "not connected to NATS") {
				v.warning = "present"
			}
		}
	}
	return v
}

// waitNATSViews waits until every view of the gateway's NATS connection
// says connected (or disconnected) and returns when they did.
func waitNATSViews(t testing.TB, gw *gateway, connected bool, timeout time.Duration) time.Time {
	t.Helper()
	var last natsViews
	if !poll(timeout, func() bool { last = gw.natsViews(); return last.all(connected) }) {
		t.Fatalf("timed out after %v waiting for every view of the gateway's NATS connection to say %s; last: %s",
			timeout, connectedWord(connected), last)
	}
	return time.Now()
}

// getJSONAccept is getJSON asking for JSON with the Accept header.
func getJSONAccept(url string, v any) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	return doJSON(req, v)
}

// TestWebSocketSurvivesReloadAndChurn keeps a WebSocket open through the
// gateway while other instances join, leave and die and the gateway's
// config is reloaded: it keeps echoing.
func TestWebSocketSurvivesReloadAndChurn(t *testing.T) {
	n := startNATS(t, 0)
	startBackend(t, "app1", n.URL, 0)
	config := coreCaddyfile(n.URL, "", "")
	gw := startGateway(t, config)
	waitRoutedTo(t, gw, "app1")

	ws := dialWS(t, gw)
	echo(t, ws, "hello before churn")

	// Another instance of the same priority joins (new connections are
	// spread over both), then leaves with SIGTERM.
	app2 := startBackend(t, "app2", n.URL, 0)
	waitRoutedTo(t, gw, "app2")
	echo(t, ws, "hello after app2 joined")
	termAt := time.Now()
	app2.Term()
	gw.waitLog(t, 3*time.Second, "app2 leaves", membershipEvent("leave", "app2", termAt))
	if code, ok := app2.Wait(10 * time.Second); !ok || code != 0 {
		t.Errorf("app2 after SIGTERM: exited %v, code %d; want exit code 0", ok, code)
	}
	echo(t, ws, "hello after app2 left")

	// A backup instance joins and dies with SIGKILL.
	app3 := startBackend(t, "app3", n.URL, 1)
	gw.waitLog(t, 5*time.Second, "app3 joins", membershipEvent("join", "app3", time.Time{}))
	killAt := time.Now()
	app3.Kill()
	gw.waitLog(t, 5*time.Second, "app3 turns stale", membershipEvent("stale", "app3", killAt))
	echo(t, ws, "hello after app3 died")

	// A trivially different config.
	if err := gw.Reload(coreCaddyfile(n.URL, "", "\theader X-Reloaded yes")); err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, 10*time.Second, "the reloaded config (header X-Reloaded) to be served", func() bool {
		resp, err := c.Get(gw.URL + "/")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode == 200 && resp.Header.Get("X-Reloaded") == "yes" && resp.Header.Get("X-Instance") == "app1"
	})
	echo(t, ws, "hello after reload")

	// New WebSockets work after the reload too.
	ws2 := dialWS(t, gw)
	echo(t, ws2, "hello on a new socket")
	echo(t, ws, "hello again on the old one")
}

// dialWS opens a WebSocket to the backends' /ws through the gateway.
func dialWS(t testing.TB, gw *gateway) *websocket.Conn {
	t.Helper()
	cfg, err := websocket.NewConfig("ws://"+gw.SiteAddr+"/ws", gw.URL)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatalf("WebSocket through the gateway: %v", err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	return ws
}

// echo sends msg on ws and expects it back within 5s.
func echo(t testing.TB, ws *websocket.Conn, msg string) {
	t.Helper()
	if err := ws.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := websocket.Message.Send(ws, msg); err != nil {
		t.Fatalf("WebSocket send %q: %v", msg, err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil {
		t.Fatalf("WebSocket receive after sending %q: %v", msg, err)
	}
	if got != msg {
		t.Fatalf("WebSocket echoed %q, want %q", got, msg)
	}
}

// TestRetryOn503AndPassiveHealth makes the preferred instance answer 503
// to everything: a POST's 503 goes back to the client and is not
// replayed; GETs are retried on the backup without a client-visible
// error; and passive health (503s of idempotent requests count, as in
// nginx) stops sending the failing instance new requests.
func TestRetryOn503AndPassiveHealth(t *testing.T) {
	_, app1, app2, gw := startCore(t, "", "")
	client := &http.Client{Timeout: 10 * time.Second}
	before := backendCount(app1, "/")

	failAt := time.Now()
	resp, err := client.Post(app1.URL+"/admin/fail?ms=5000", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /admin/fail on app1: status %d", resp.StatusCode)
	}

	// A POST is never replayed once sent: the client gets app1's 503.
	resp, err = client.Post(gw.URL+"/echo", "text/plain", strings.NewReader("not twice"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Instance") != "app1" {
		t.Errorf("POST /echo while app1 fails: status %d from %q; want app1's 503 passed to the client",
			resp.StatusCode, resp.Header.Get("X-Instance"))
	}
	if n := backendCount(app2, "/echo"); n != 0 {
		t.Errorf("the POST that got a 503 from app1 was replayed on app2 (%d times)", n)
	}

	// GETs are retried on app2.
	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app2", 300, failAt)
	rs := load.Stop()
	t.Logf("load while app1 answers 503: %s", rs.Summary())
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d GETs failed while app1 answered 503 and app2 was healthy; first ones:\n%s",
			len(errs), len(rs), errs.Describe(10))
	}
	if time.Since(failAt) > 5*time.Second {
		t.Fatalf("the load ran past app1's 5s of failure: the test machine is too slow for this check")
	}

	hits := backendCount(app1, "/") - before
	t.Logf("app1 got %d of the %d GETs while answering 503", hits, len(rs))
	t.Run("passive_health_503", func(t *testing.T) {
		// nginx takes a server out for fail_timeout after max_fails (1)
		// failures. The load's first GET went to app1 (priority 0; the
		// POST's 503 does not count); once its 503 was back, app1 was out.
		// Only the GETs sent before that first one was answered could
		// still have been routed to app1.
		limit := 1
		if len(rs) > 0 {
			limit += len(rs[1:].Before(rs[0].End()))
		}
		if hits > limit {
			t.Errorf("app1 got %d of %d GETs while it answered 503 to all of them (want at most %d: the first and the %d sent while it was under way): 503s of idempotent requests do not take an instance out of rotation",
				hits, len(rs), limit, limit-1)
		}
	})
}
