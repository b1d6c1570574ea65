package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// The failure scenarios of the integration suite, beyond the core ones of
// core_test.go. Every figure asserted here is the gateway's contract
// (README, docs/PROTOCOL.md); the measured values are logged with t.Logf so
// that `go test -v` shows them.
//
// Timings: heartbeats every 200ms (testbackend's default), stale_after 1s
// (coreCaddyfile), the load one GET every 5ms unless a test says
// otherwise.

const staleAfter = time.Second

// TestHangSIGSTOP stops the preferred instance with SIGSTOP under load:
// its kernel still accepts TCP connections and requests, but nothing
// answers (nginx and stock Caddy wait for their read timeout, 60s by
// default, with every request sent to it). The gateway notices the
// silence of its heartbeats: after stale_after no new request goes to it,
// the GETs already waiting on it are cancelled and retried on the backup,
// so no GET fails and none takes longer than stale_after + 1s. A POST
// waiting on it is cancelled too, but not replayed.
func TestHangSIGSTOP(t *testing.T) {
	_, app1, app2, gw := startCore(t, "", "")
	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 100, time.Time{})

	// A POST that will be waiting on app1 when it hangs: /slow is a GET
	// route, so the POST goes to /echo with a body app1 reads at once;
	// it is sent just after the SIGSTOP below.
	stopAt := time.Now()
	app1.Stop()
	postDone := make(chan result, 1)
	go func() {
		c := &http.Client{Timeout: 30 * time.Second}
		r := result{Start: time.Now()}
		resp, err := c.Post(gw.URL+"/echo", "text/plain", strings.NewReader("sent once"))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			r.Status, r.Instance = resp.StatusCode, resp.Header.Get("X-Instance")
		}
		r.Err, r.Latency = err, time.Since(r.Start)
		postDone <- r
	}()

	stale := gw.waitLog(t, 5*time.Second, "app1 turns stale", membershipEvent("stale", "app1", stopAt))
	staleAt := stale.Time()
	load.waitServed(t, 5*time.Second, "app2", 200, staleAt)
	// Two seconds of the hang after staleness, then app1 resumes.
	time.Sleep(time.Until(staleAt.Add(2 * time.Second)))
	contAt := time.Now()
	app1.Cont()
	resumed := poll(5*time.Second, func() bool { return load.Results().Since(contAt).ByInstance()["app1"] >= 50 })
	rs := load.Stop()
	post := <-postDone

	t.Logf("load: %s", rs.Summary())
	hung := rs.Since(stopAt).Before(contAt)
	t.Logf("requests started while app1 was stopped: %s", hung.Summary())
	t.Logf("SIGSTOP -> app1 stale in the gateway's log: %s (stale_after %v, heartbeats every 200ms)", ms(staleAt.Sub(stopAt)), staleAfter)
	t.Logf("POST sent while app1 hung: %s", post)

	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d GETs failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	limit := staleAfter + time.Second
	if slow := rs.slower(limit); len(slow) > 0 {
		t.Errorf("%d GETs took longer than stale_after + 1s (%v); the slowest %v; first ones:\n%s",
			len(slow), limit, rs.Latency(1).Round(time.Millisecond), slow.Describe(10))
	}
	if staleAt.Sub(stopAt) > staleAfter+500*time.Millisecond {
		t.Errorf("app1 turned stale %s after SIGSTOP; want within stale_after (%v) of its last heartbeat", ms(staleAt.Sub(stopAt)), staleAfter)
	}
	// After staleness (and 100ms for requests already on their way
	// through the gateway), app1 gets nothing new until it resumes.
	if late := rs.Since(staleAt.Add(100 * time.Millisecond)).Before(contAt).ByInstance()["app1"]; late > 0 {
		t.Errorf("%d requests started after app1 turned stale were answered by app1 while it was stopped", late)
	}
	if !resumed {
		t.Errorf("app1 did not get traffic back within 5s of SIGCONT: %s", load.Results().Since(contAt).Summary())
	}
	// The POST waited on app1 and must not have been replayed on app2.
	if n := backendCount(app2, "/echo"); n != 0 {
		t.Errorf("the POST that waited on hung app1 was replayed on app2 (%d times); result: %s", n, post)
	}
	if post.OK() && post.Instance == "app1" {
		t.Logf("the POST was answered by app1 itself (it resumed before the gateway cancelled it)")
	} else if post.OK() {
		t.Errorf("the POST that waited on hung app1 was answered by %q: replayed", post.Instance)
	} else if post.Latency > limit+time.Second {
		t.Errorf("the POST waited %v on hung app1; want it cancelled when app1 turned stale", post.Latency.Round(time.Millisecond))
	}
}

// TestRollingRestart restarts every instance in turn (SIGTERM, wait for
// the exit, start again on the same id and address) under load with
// round-robin over all three: no client sees an error, and once an
// instance has published `leaving` the gateway routes it nothing new;
// only requests already in flight finish on it.
func TestRollingRestart(t *testing.T) {
	n := startNATS(t, 0)
	apps := []*backend{
		startBackend(t, "app1", n.URL, 0),
		startBackend(t, "app2", n.URL, 0),
		startBackend(t, "app3", n.URL, 0),
	}
	gw := startGateway(t, roundRobinCaddyfile(n.URL, "", ""))
	for _, a := range apps {
		waitRoutedTo(t, gw, a.ID)
	}
	load := startLoad(t, gw.URL+"/", loadEvery)
	for _, a := range apps {
		load.waitServed(t, 5*time.Second, a.ID, 30, time.Time{})
	}

	type step struct {
		id, oldPID, newPID    string
		term, published, seen time.Time
		exited, served        time.Time
	}
	var steps []step
	for i, old := range apps {
		s := step{id: old.ID, oldPID: old.pid()}
		s.term = time.Now()
		old.Term()
		leave := gw.waitLog(t, 3*time.Second, old.ID+" leaves", membershipEvent("leave", old.ID, s.term))
		s.seen = leave.Time()
		if code, ok := old.Wait(10 * time.Second); !ok || code != 0 {
			t.Fatalf("%s after SIGTERM: exited %v, code %d; want exit code 0", old.ID, ok, code)
		}
		s.exited = time.Now()
		var ok bool
		if s.published, ok = old.logTime("leaving announced"); !ok {
			t.Fatalf("%s's log has no `leaving announced` line: when it published leaving is unknown, so the cut below cannot be checked:\n%s",
				old.ID, tail(old.logPath, 20))
		}
		restarted := startBackend(t, old.ID, n.URL, 0, "--listen", old.Addr)
		s.newPID = restarted.pid()
		apps[i] = restarted
		waitFor(t, 5*time.Second, "restarted "+old.ID+" to be served", func() bool {
			return len(load.Results().Since(s.exited).servedBy(s.newPID)) >= 30
		})
		s.served = firstServed(load.Results().Since(s.exited), old.ID).Start
		steps = append(steps, s)
	}
	rs := load.Stop()

	t.Logf("load: %s", rs.Summary())
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	for _, s := range steps {
		// Requests that started after the gateway had the leave (plus 100ms
		// for a request on its way through the gateway) must not reach the
		// old process.
		cut := maxTime(s.published, s.seen).Add(100 * time.Millisecond)
		if late := rs.Since(cut).servedBy(s.oldPID); len(late) > 0 {
			t.Errorf("%s: %d requests started more than 100ms after its leaving was published were served by the old process; first ones:\n%s",
				s.id, len(late), late.Describe(5))
		}
		last, _ := rs.servedBy(s.oldPID).LastStartedServed(s.id)
		t.Logf("%s: SIGTERM -> leaving published %s -> gateway has it %s; last request served by the old process started %s after SIGTERM; exit %s; restarted process first served %s after the old one exited",
			s.id, ms(s.published.Sub(s.term)), ms(s.seen.Sub(s.term)), ms(last.Start.Sub(s.term)), ms(s.exited.Sub(s.term)), ms(s.served.Sub(s.exited)))
	}
}

// roundRobinCaddyfile is coreCaddyfile with `policy round_robin` and
// extra cx_proxy options.
func roundRobinCaddyfile(natsURL, proxyExtra, siteExtra string) string {
	return strings.Replace(coreCaddyfile(natsURL, "", siteExtra), "stale_after 1s",
		"stale_after 1s\n\t\tpolicy round_robin"+proxyExtra, 1)
}

// Test503Storm makes the preferred instance answer 503 to everything for
// 3s under a mixed load of GETs and POSTs: no GET's 503 reaches the
// client (each is retried on the backup), and no POST is replayed: every
// POST reaches exactly one backend once, and those app1 answered with 503
// get that 503.
func Test503Storm(t *testing.T) {
	const storm = 3 * time.Second
	_, app1, app2, gw := startCore(t, "", "")
	gets := startLoad(t, gw.URL+"/", loadEvery)
	gets.waitServed(t, 5*time.Second, "app1", 100, time.Time{})

	var postSeq sync.Mutex
	seq := 0
	posts := startLoadWith(t, 20*time.Millisecond, func(ctx context.Context) (*http.Request, error) {
		postSeq.Lock()
		seq++
		body := fmt.Sprintf("post-%d", seq)
		postSeq.Unlock()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw.URL+"/echo", strings.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "text/plain")
		}
		return req, err
	}, func(resp *http.Response, body []byte) error {
		if resp.StatusCode == http.StatusOK && !strings.HasPrefix(string(body), "post-") {
			return fmt.Errorf("echo body %q", truncate(string(body), 50))
		}
		return nil
	})
	posts.waitServed(t, 5*time.Second, "app1", 5, time.Time{})

	stormAt := time.Now()
	resp, err := http.Post(fmt.Sprintf("%s/admin/fail?ms=%d", app1.URL, storm.Milliseconds()), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	failing := time.Now() // app1 answers 503 to every request sent from now on
	stormEnd := stormAt.Add(storm)
	// After the storm app1 (priority 0) gets the traffic back once its
	// passive-health penalty expires: fail_timeout (10s, the default)
	// after its last failure, which came between stormAt and stormEnd.
	back := poll(time.Until(stormEnd.Add(defaultFailTimeout+5*time.Second)), func() bool {
		return gets.Results().Since(stormEnd).ByInstance()["app1"] >= 20
	})
	grs, prs := gets.Stop(), posts.Stop()

	t.Logf("GETs: %s", grs.Summary())
	t.Logf("POSTs: %s", prs.Summary())
	if g503 := grs.withStatus(http.StatusServiceUnavailable); len(g503) > 0 {
		t.Errorf("%d GET 503s reached the client; first ones:\n%s", len(g503), g503.Describe(10))
	}
	if errs := grs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d GETs failed; first ones:\n%s", len(errs), len(grs), errs.Describe(10))
	}
	// Every POST reached exactly one backend, once.
	echoed := backendCount(app1, "/echo") + backendCount(app2, "/echo")
	if echoed != len(prs) {
		t.Errorf("the backends received %d POSTs for the %d the client sent: POSTs were replayed (or lost)", echoed, len(prs))
	}
	var p503, pOther int
	for _, r := range prs {
		switch {
		case r.OK():
		case r.Status == http.StatusServiceUnavailable && r.Instance == "app1" && !r.Start.Before(stormAt.Add(-100*time.Millisecond)) && r.Start.Before(stormEnd.Add(100*time.Millisecond)):
			p503++
		default:
			pOther++
			t.Errorf("POST failed otherwise than with app1's 503 during the storm: %s", r)
		}
	}
	t.Logf("POSTs during the storm: %d answered 503 by app1 (passed to the client, not replayed), %d failed otherwise", p503, pOther)
	during := grs.Since(stormAt).Before(stormEnd)
	t.Logf("GETs started during the storm: %s", during.Summary())
	if !back {
		t.Fatalf("app1 did not get GETs back within fail_timeout (%v) + 5s of the storm's end: %s",
			defaultFailTimeout, gets.Results().Since(stormEnd).Summary())
	}
	first := firstServed(grs.Since(failing), "app1")
	t.Logf("storm start -> app1 serves GETs again: %s (storm %v, fail_timeout %v)", ms(first.Start.Sub(stormAt)), storm, defaultFailTimeout)
	// Not before fail_timeout after its first failure (after stormAt;
	// 100ms for a request on its way to the gateway), not later than
	// fail_timeout after its last (before stormEnd; 1s for the load's
	// schedule and -race).
	if early := stormAt.Add(defaultFailTimeout - 100*time.Millisecond); first.Start.Before(early) {
		t.Errorf("app1 served a GET %s after the storm began: its passive-health penalty (fail_timeout %v) was cut short",
			ms(first.Start.Sub(stormAt)), defaultFailTimeout)
	}
	if late := stormEnd.Add(defaultFailTimeout + time.Second); first.Start.After(late) {
		t.Errorf("app1 served GETs again only %s after the storm ended; want within fail_timeout (%v) of its last failure",
			ms(first.Start.Sub(stormEnd)), defaultFailTimeout)
	}
}

// defaultFailTimeout is cx_proxy's fail_timeout when not set (README).
const defaultFailTimeout = 10 * time.Second

// TestWebSockets200SurviveReloadAndChurn opens 200 WebSockets through the
// gateway (round-robin over app1 and app2), then churns other instances
// (one joins and leaves with SIGTERM, one joins and dies with SIGKILL)
// and reloads the config twice (`caddy-cx reload`, admin POST /load):
// every socket still echoes after each step.
func TestWebSockets200SurviveReloadAndChurn(t *testing.T) {
	const sockets = 200
	n := startNATS(t, 0)
	startBackend(t, "app1", n.URL, 0)
	startBackend(t, "app2", n.URL, 0)
	config := func(header string) string {
		return roundRobinCaddyfile(n.URL, "", "\theader X-Config "+header)
	}
	gw := startGateway(t, config("v1"))
	waitRoutedTo(t, gw, "app1")
	waitRoutedTo(t, gw, "app2")

	wss := make([]*websocket.Conn, sockets)
	for i := range wss {
		wss[i] = dialWS(t, gw)
	}
	echoAll := func(stage string) {
		t.Helper()
		start := time.Now()
		errs := make([]error, sockets)
		var wg sync.WaitGroup
		for i, ws := range wss {
			wg.Go(func() { errs[i] = echoErr(ws, fmt.Sprintf("socket %d %s", i, stage)) })
		}
		wg.Wait()
		failed := 0
		for i, err := range errs {
			if err != nil {
				failed++
				if failed <= 5 {
					t.Errorf("%s: socket %d: %v", stage, i, err)
				}
			}
		}
		if failed > 0 {
			t.Fatalf("%s: %d of %d WebSockets no longer echo", stage, failed, sockets)
		}
		t.Logf("%s: all %d WebSockets echo (%s for all)", stage, sockets, ms(time.Since(start)))
	}
	echoAll("opened")

	app3 := startBackend(t, "app3", n.URL, 0)
	waitRoutedTo(t, gw, "app3")
	echoAll("app3 joined")
	termAt := time.Now()
	app3.Term()
	gw.waitLog(t, 3*time.Second, "app3 leaves", membershipEvent("leave", "app3", termAt))
	if code, ok := app3.Wait(10 * time.Second); !ok || code != 0 {
		t.Errorf("app3 after SIGTERM: exited %v, code %d", ok, code)
	}
	echoAll("app3 left")
	app4 := startBackend(t, "app4", n.URL, 5)
	gw.waitLog(t, 5*time.Second, "app4 joins", membershipEvent("join", "app4", time.Time{}))
	killAt := time.Now()
	app4.Kill()
	gw.waitLog(t, 5*time.Second, "app4 turns stale", membershipEvent("stale", "app4", killAt))
	echoAll("app4 joined and died")

	waitConfig := func(v string) {
		t.Helper()
		c := &http.Client{Timeout: 2 * time.Second}
		waitFor(t, 10*time.Second, "config "+v+" to be served", func() bool {
			resp, err := c.Get(gw.URL + "/")
			if err != nil {
				return false
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			return resp.StatusCode == 200 && resp.Header.Get("X-Config") == v
		})
	}
	if err := gw.Reload(config("v2")); err != nil {
		t.Fatal(err)
	}
	waitConfig("v2")
	echoAll("after caddy-cx reload")
	if err := gw.LoadViaAdmin(config("v3")); err != nil {
		t.Fatal(err)
	}
	waitConfig("v3")
	echoAll("after admin /load")
	// New sockets work after both reloads.
	echoAll("again")
	if err := echoErr(dialWS(t, gw), "a new socket"); err != nil {
		t.Errorf("new WebSocket after the reloads: %v", err)
	}
}

// echoErr sends msg on ws and expects it back within 5s.
func echoErr(ws *websocket.Conn, msg string) error {
	if err := ws.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if err := websocket.Message.Send(ws, msg); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	if got != msg {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}

// TestNATSOutage8sResync kills NATS for 8s under load. While it is down
// app1 (priority 0) switches to draining, which the gateway cannot hear.
// No request fails; nobody turns stale during the outage; and within 1s
// of NATS's return the gateway has re-synced: it has app1's draining
// state and routes new requests to app2.
func TestNATSOutage8sResync(t *testing.T) {
	const outage = 8 * time.Second
	n, app1, _, gw := startCore(t, "", "")
	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 100, time.Time{})

	killAt := time.Now()
	n.Kill()
	time.Sleep(2 * time.Second)
	app1.Signal(syscall.SIGUSR1) // draining; the heartbeat is lost
	time.Sleep(time.Until(killAt.Add(outage)))
	restartAt := time.Now()
	n.Restart()
	draining := gw.waitLog(t, 10*time.Second, "app1 draining after NATS returns", membershipEvent("draining", "app1", restartAt))
	load.waitServed(t, 5*time.Second, "app2", 100, draining.Time())
	time.Sleep(staleAfter + 500*time.Millisecond) // nobody turns stale after the return either
	rs := load.Stop()

	resync := draining.Time().Sub(restartAt)
	t.Logf("load: %s", rs.Summary())
	t.Logf("NATS back -> gateway has app1's draining state (changed during the outage): %s", ms(resync))
	_, re := checkNATSLossLogged(t, gw, killAt, restartAt)
	t.Logf("NATS back -> gateway logs reconnecting: %s", ms(re.Sub(restartAt)))
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	if resync > time.Second {
		t.Errorf("membership re-synced %s after NATS returned; want within 1s", ms(resync))
	}
	for _, e := range logEntries(gw.logPath) {
		if e.Str("event") == "stale" && !e.Time().Before(killAt) {
			t.Errorf("%s turned stale at +%s from the NATS kill (NATS back at +%s): silence while disconnected proves nothing",
				e.Str("instance"), ms(e.Time().Sub(killAt)), ms(restartAt.Sub(killAt)))
		}
	}
	if late := rs.Since(draining.Time().Add(100 * time.Millisecond)).ByInstance()["app1"]; late > 0 {
		t.Errorf("%d requests started after the gateway had app1's draining state were still served by app1", late)
	}
}

// TestNATSClusterNodeDown runs a 3-node NATS cluster; the gateway and the
// instances know all three. The node the gateway is connected to is
// killed under load: routing does not change (app1 serves everything),
// nobody turns stale, no request fails.
func TestNATSClusterNodeDown(t *testing.T) {
	nodes := startNATSCluster(t, 3)
	urls := clusterURLs(nodes)
	startBackend(t, "app1", strings.Join(urls, ","), 0)
	startBackend(t, "app2", strings.Join(urls, ","), 1)
	gw := startGateway(t, coreCaddyfile(strings.Join(urls, " "), "", ""))
	waitRoutedTo(t, gw, "app1")
	gw.waitLog(t, 5*time.Second, "app2 joins", membershipEvent("join", "app2", time.Time{}))

	victim := -1
	waitFor(t, 5*time.Second, "the gateway's NATS connection to show on a node", func() bool {
		for i, node := range nodes {
			for _, name := range node.clients() {
				if name == "caddy-cx gateway" {
					victim = i
					return true
				}
			}
		}
		return false
	})
	var onVictim []string
	onVictim = append(onVictim, nodes[victim].clients()...)
	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 100, time.Time{})

	killAt := time.Now()
	nodes[victim].Kill()
	// The gateway moves to a surviving node; so do the instances that
	// were on the victim, or they would turn stale.
	waitFor(t, 10*time.Second, "the gateway and both instances to reconnect to the surviving nodes", func() bool {
		var names []string
		for i, node := range nodes {
			if i != victim {
				names = append(names, node.clients()...)
			}
		}
		return slices.Contains(names, "caddy-cx gateway") &&
			slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "app1") }) &&
			slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "app2") })
	})
	// A new instance joining through the surviving nodes is routed.
	startBackend(t, "app3", strings.Join(urls, ","), -1)
	load.waitServed(t, 5*time.Second, "app3", 50, killAt)
	rs := load.Stop()

	t.Logf("killed NATS node%d, which had the clients %q", victim+1, onVictim)
	t.Logf("load: %s", rs.Summary())
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	joined, _ := gw.findLog(membershipEvent("join", "app3", killAt))
	before := rs.Since(killAt)
	if joined != nil {
		// requests that started just before the join was logged may be
		// routed just after it
		before = before.Before(joined.Time().Add(-50 * time.Millisecond))
	}
	if by := before.ByInstance(); by["app1"] != len(before) {
		t.Errorf("after the node was killed app1 served %d of %d requests (%v); want all", by["app1"], len(before), by)
	}
	for _, e := range logEntries(gw.logPath) {
		if (e.Str("event") == "stale" || e.Str("event") == "leave") && !e.Time().Before(killAt) {
			t.Errorf("%s: %s at +%s after the NATS node was killed", e.Str("instance"), e.Str("event"), ms(e.Time().Sub(killAt)))
		}
	}
	lost, re := checkNATSLossLogged(t, gw, killAt, killAt)
	t.Logf("node killed -> gateway logs the loss: %s, reconnected to another node: %s", ms(lost.Sub(killAt)), ms(re.Sub(killAt)))
}

// TestChurnSoak has instances join and leave (SIGTERM) every 200ms under
// load with round-robin over all of them, for 10s (60s with CX_SOAK=1):
// no request fails, and afterwards the gateway's goroutines and heap are
// back to where they were before the churn. Left instances are forgotten
// after 2s (forget_after), so the registry must shrink back too.
func TestChurnSoak(t *testing.T) {
	duration := 10 * time.Second
	if envBool("CX_SOAK") {
		duration = 60 * time.Second
	}
	const every = 200 * time.Millisecond
	const maxChurned = 3
	n := startNATS(t, 0)
	app1 := startBackend(t, "app1", n.URL, 0)
	gw := startGateway(t, roundRobinCaddyfile(n.URL, "\n\t\tforget_after 2s", ""))
	waitRoutedTo(t, gw, "app1")

	// The baseline: after a warm-up load, with the load's connections
	// closed.
	base := warmBaseline(t, gw, 200, "app1")
	_, baseConns := app1.conns()
	t.Logf("before the churn: %s; %d connections open to app1", base, baseConns)

	load := startLoad(t, gw.URL+"/", loadEvery)
	var alive []*backend
	var reapers sync.WaitGroup
	joins, leaves := 0, 0
	start := time.Now()
	ticker := time.NewTicker(every)
	for i := 0; time.Since(start) < duration; i++ {
		<-ticker.C
		if len(alive) < maxChurned {
			joins++
			alive = append(alive, startBackend(t, fmt.Sprintf("churn%d", joins), n.URL, 0))
			continue
		}
		b := alive[0]
		alive = alive[1:]
		leaves++
		b.Term()
		reapers.Go(func() { b.Wait(30 * time.Second) })
	}
	ticker.Stop()
	for _, b := range alive {
		leaves++
		b.Term()
		reapers.Go(func() { b.Wait(30 * time.Second) })
	}
	reapers.Wait()
	churnEnd := time.Now()
	load.waitServed(t, 5*time.Second, "app1", 50, churnEnd)
	rs := load.Stop()

	t.Logf("churn: %d instances joined and %d left in %v", joins, leaves, time.Since(start).Round(time.Millisecond))
	t.Logf("load: %s", rs.Summary())
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed; first ones:\n%s", len(errs), len(rs), errs.Describe(10))
	}
	by := rs.ByInstance()
	churned := len(rs) - len(rs.Errors()) - by["app1"]
	t.Logf("churned instances served %d of %d requests", churned, len(rs))
	if churned == 0 {
		t.Errorf("the churned instances got no traffic: the churn did not exercise routing")
	}

	// Everything the churn added goes away: forget_after (2s) for the
	// registry, the closed connections of the instances that exited.
	// Upstream connections to app1 still kept alive count two goroutines
	// each (read and write loops); they are accounted for.
	var after runtimeStats
	var conns int
	var err error
	settled := poll(15*time.Second, func() bool {
		after, err = gw.runtimeStats()
		if err != nil {
			return false
		}
		_, conns = app1.conns()
		// +5: the admin API's own connections and timers, not the churn's.
		return after.Goroutines-2*(conns-baseConns) <= base.Goroutines+5
	})
	t.Logf("after the churn: %s; %d connections open to app1", after, conns)
	if !settled {
		t.Errorf("goroutines did not come back: %d before the churn, %d after (of which %d for %d more keep-alive connections to app1)",
			base.Goroutines, after.Goroutines, 2*(conns-baseConns), conns-baseConns)
	}
	// Heap: within 25% + 2MiB of the start (idle connections' buffers
	// and allocator slack).
	if limit := base.HeapAlloc + base.HeapAlloc/4 + 2<<20; after.HeapAlloc > limit {
		t.Errorf("heap did not come back: %.1f MiB before the churn, %.1f MiB after (limit %.1f MiB)",
			mib(base.HeapAlloc), mib(after.HeapAlloc), mib(limit))
	}
	requireAdminAPI(t, gw)
	listed := -1
	if !poll(10*time.Second, func() bool {
		doc, ok := gw.Instances()
		if !ok {
			return false
		}
		listed = 0
		for _, s := range doc.Services {
			listed += len(s.Instances)
		}
		return listed == 1
	}) {
		t.Errorf("/cx/instances still lists %d instances 10s after the churn (forget_after 2s); want app1 only", listed)
	}
	// Every churned instance left and was forgotten, each logged once.
	forgotten := map[string]int{}
	for _, e := range logEntries(gw.logPath) {
		if e.Str("event") == "forget" {
			forgotten[e.Str("instance")]++
		}
	}
	for i := 1; i <= joins; i++ {
		if id := fmt.Sprintf("churn%d", i); forgotten[id] != 1 {
			t.Errorf("%s: forgotten %d times in the gateway's log; want once (it left, forget_after 2s)", id, forgotten[id])
		}
	}
}

// TestGatewayRestart kills the gateway while the instances run and starts
// it again: it routes to the preferred instance within 1s of its start.
func TestGatewayRestart(t *testing.T) {
	_, _, _, gw := startCore(t, "", "")
	gw.Kill()
	c := &http.Client{Timeout: 500 * time.Millisecond}
	startAt := time.Now()
	if err := gw.start(nil); err != nil {
		t.Fatal(err)
	}
	var firstAnswer, firstApp1 time.Time
	var statuses []string
	poll(10*time.Second, func() bool {
		inst, status, err := get(c, gw.URL+"/")
		if err == nil && firstAnswer.IsZero() {
			firstAnswer = time.Now()
		}
		if err == nil && len(statuses) < 5 {
			statuses = append(statuses, fmt.Sprintf("%d %s", status, inst))
		}
		if err == nil && status == 200 && inst == "app1" {
			firstApp1 = time.Now()
			return true
		}
		return gw.exited()
	})
	if firstApp1.IsZero() {
		t.Fatalf("the restarted gateway did not route to app1 within 10s (first answers: %q)", statuses)
	}
	t.Logf("gateway start -> site answers: %s; -> first request served by app1: %s (first answers %q)",
		ms(firstAnswer.Sub(startAt)), ms(firstApp1.Sub(startAt)), statuses)
	if d := firstApp1.Sub(startAt); d > time.Second {
		t.Errorf("the restarted gateway served the running instances %s after its start; want within 1s", ms(d))
	}
	// And under load right away: no errors.
	load := startLoad(t, gw.URL+"/", loadEvery)
	load.waitServed(t, 5*time.Second, "app1", 100, time.Time{})
	if errs := load.Stop().Errors(); len(errs) > 0 {
		t.Errorf("%d errors after the restart:\n%s", len(errs), errs.Describe(5))
	}
}
