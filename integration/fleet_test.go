package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The fleet scenarios (issue 12): three gateways gw1..gw3 on a 3-node NATS
// cluster with JetStream, instances announcing on every node. Each test
// asserts one item of the "Done when" list and logs every figure
// it measured (go test -v).
//
// Timings: instance heartbeats every 200ms, stale_after 1s; gateway
// heartbeats every 1s (heartbeat.DefaultGatewayPeriod), stale after 3s;
// each gateway under its own load of one GET every 10ms.

const (
	fleetLoadEvery = 10 * time.Millisecond
	// fleetBudget is how long after a control call returned, or after the
	// first failure one gateway saw, every gateway may still send a new
	// request to the instance (the 100ms).
	fleetBudget = 100 * time.Millisecond
)

// fleetCore is the common set-up: the cluster, app1 (priority 0, the
// primary), app2 (priority 1) and three gateways that all route to app1
// and follow the control bucket.
type fleetCore struct {
	nodes      []*natsNode
	urls       string // the cluster's client URLs, comma-separated (instances' --nats)
	app1, app2 *backend
	gws        []*fleetGateway
}

func startFleetCore(t *testing.T, o fleetOptions) *fleetCore {
	t.Helper()
	f := &fleetCore{nodes: startNATSClusterJS(t, 3)}
	f.urls = strings.Join(clusterURLs(f.nodes), ",")
	f.app1 = startBackend(t, "app1", f.urls, 0)
	f.app2 = startBackend(t, "app2", f.urls, 1)
	f.gws = startFleet(t, f.nodes, 3, o)
	waitAllRouteTo(t, f.gws, 10*time.Second, "app1")
	for _, g := range f.gws {
		waitFor(t, 5*time.Second, g.ID+" to know app2", func() bool {
			st, _ := g.instanceState("app2")
			return st == "active"
		})
	}
	waitFleetControl(t, f.gws, 15*time.Second)
	return f
}

// waitFleetControl waits until every gateway says it follows the control
// bucket (GatewayStatus.control of itself).
func waitFleetControl(t testing.TB, gws []*fleetGateway, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	for _, g := range gws {
		var last *gatewayStatus
		if !poll(time.Until(start.Add(timeout)), func() bool {
			doc, err := g.gateways()
			if err != nil {
				return false
			}
			last = doc.gateway(fleetPrefix, g.ID)
			return last != nil && last.Self && last.Control
		}) {
			t.Fatalf("%s does not follow the control bucket %v after its start (its own entry in /cx/gateways: %v)", g.ID, timeout, last)
		}
	}
	t.Logf("every gateway follows the control bucket %s after the fleet was up", ms(time.Since(start)))
}

// instanceControl is an instance's control entry in /cx/instances.
type instanceControl struct {
	State   string    `json:"state"`
	By      string    `json:"by"`
	Gateway string    `json:"gateway"`
	At      time.Time `json:"at"`
	Holds   bool      `json:"holds"`
}

// instanceView is one instance in /cx/instances with the fields the fleet
// scenarios read.
type instanceView struct {
	ID        string           `json:"id"`
	State     string           `json:"state"`
	StartedAt time.Time        `json:"started_at"`
	Failing   bool             `json:"failing"`
	Primary   bool             `json:"primary"`
	Control   *instanceControl `json:"control"`
}

// instance returns id as /cx/instances shows it (nil if not listed).
func (g *gateway) instance(id string) (*instanceView, error) {
	var doc struct {
		Services []struct {
			SubjectPrefix string         `json:"subject_prefix"`
			Instances     []instanceView `json:"instances"`
		} `json:"services"`
	}
	if err := getJSON("http://"+g.AdminAddr+"/cx/instances", &doc); err != nil {
		return nil, err
	}
	for _, s := range doc.Services {
		for i := range s.Instances {
			if s.SubjectPrefix == fleetPrefix && s.Instances[i].ID == id {
				return &s.Instances[i], nil
			}
		}
	}
	return nil, nil
}

// checkNoErrors fails the test for every load with errors.
func checkNoErrors(t testing.TB, gws []*fleetGateway, rss []results) {
	t.Helper()
	for i, rs := range rss {
		t.Logf("load through %s: %s", gws[i].ID, rs.Summary())
		if errs := rs.Errors(); len(errs) > 0 {
			t.Errorf("%s: %d of %d requests failed; first ones:\n%s", gws[i].ID, len(errs), len(rs), errs.Describe(10))
		}
	}
}

// TestFleetDrain drains app1 through one gateway's admin API under load on
// all three, five times (through gw1, gw2, gw3, ...), each time with a
// slow request in flight on app1 through another gateway, then sets it
// ready through a third:
//
//   - no gateway starts a request on app1 later than 100ms after the
//     drain call returned;
//   - the slow request in flight finishes on app1 (200);
//   - `ready` gives app1 the traffic back: no gateway starts a request on
//     app2 later than 100ms after that call returned;
//   - no client error through any gateway; the other gateways show who
//     drained app1 (control.gateway, holds) in /cx/instances.
func TestFleetDrain(t *testing.T) {
	const reps = 5
	f := startFleetCore(t, fleetOptions{})
	gws := f.gws
	loads := startFleetLoads(t, gws, "/", fleetLoadEvery)
	loads.waitServed(t, gws, 5*time.Second, "app1", 20, time.Time{})
	slowClient := &http.Client{Timeout: 30 * time.Second}

	var drainLag, readyLag, slowTook, drainFirst, readyFirst durations
	for r := range reps {
		via, slowVia, readyVia := gws[r%3], gws[(r+1)%3], gws[(r+2)%3]
		before := backendCount(f.app1, "/slow")
		slowDone := make(chan result, 1)
		go func() { slowDone <- fetch(slowClient, slowVia.URL+"/slow?ms=1500") }()
		waitFor(t, 5*time.Second, "the slow request to reach app1", func() bool { return backendCount(f.app1, "/slow") > before })

		ans, drained := via.mustControl(t, "app1", "drain")
		loads.waitServed(t, gws, 5*time.Second, "app2", 20, drained)
		slow := <-slowDone
		slowTook = append(slowTook, slow.Latency)
		if !slow.OK() || slow.Instance != "app1" {
			t.Errorf("rep %d: the request in flight on app1 through %s when it was drained: %s; want 200 from app1", r+1, slowVia.ID, slow)
		}
		for i, l := range loads {
			rs := l.Results()
			last := rs.lastStartServedByID("app1", drained.Add(-time.Second))
			lag := last.Sub(drained)
			if last.IsZero() {
				lag = -time.Second
			}
			drainLag = append(drainLag, lag)
			if !last.IsZero() {
				drainFirst = append(drainFirst, firstServed(rs.Since(last), "app2").Start.Sub(drained))
			}
			if late := rs.Since(drained.Add(fleetBudget)).ByInstance()["app1"]; late > 0 {
				t.Errorf("rep %d: %s started %d requests on app1 more than %v after the drain call through %s returned (the last %s after)",
					r+1, gws[i].ID, late, fleetBudget, via.ID, ms(lag))
			}
		}
		// Every gateway shows the drain and who made it.
		for _, g := range gws {
			in, err := g.instance("app1")
			if err != nil || in == nil || in.Control == nil {
				t.Errorf("rep %d: %s: app1 in /cx/instances has no control entry after the drain (%+v, %v)", r+1, g.ID, in, err)
				continue
			}
			if c := in.Control; c.State != "drain" || c.Gateway != via.ID || !c.Holds {
				t.Errorf("rep %d: %s shows app1's control as %+v; want state drain, gateway %s, holds", r+1, g.ID, *c, via.ID)
			}
		}
		if r == 0 {
			t.Logf("drain answer: %+v", ans)
		}

		_, ready := readyVia.mustControl(t, "app1", "ready")
		loads.waitServed(t, gws, 5*time.Second, "app1", 20, ready)
		for i, l := range loads {
			rs := l.Results()
			last := rs.lastStartServedByID("app2", drained)
			readyLag = append(readyLag, last.Sub(ready))
			readyFirst = append(readyFirst, firstServed(rs.Since(last), "app1").Start.Sub(ready))
			if late := rs.Since(ready.Add(fleetBudget)).ByInstance()["app2"]; late > 0 {
				t.Errorf("rep %d: %s started %d requests on app2 more than %v after the ready call through %s returned: app1 was not back",
					r+1, gws[i].ID, late, fleetBudget, readyVia.ID)
			}
		}
	}
	checkNoErrors(t, gws, loads.Stop())
	t.Logf("drain call returned -> last new request a gateway started on app1: %s (negative: before the call returned); -> first on app2: %s",
		drainLag, drainFirst)
	t.Logf("ready call returned -> last new request a gateway started on app2: %s; -> first on app1: %s", readyLag, readyFirst)
	t.Logf("(each gateway's load starts a request every %v: the switch lies between the last and the first)", fleetLoadEvery)
	t.Logf("slow requests (1500ms) in flight on app1 across its drain: took %s", slowTook)
}

// TestFleetMaintenanceSurvivesRestarts puts app1 in maintenance through
// gw2, then restarts app1 (SIGKILL, a new process on the same address)
// and every gateway (all three SIGKILLed, then started again): app1
// gets no request at all, through any gateway, until `ready` through gw3,
// which gives it the traffic back on every gateway within 100ms. Each
// restarted gateway reads the state back from the bucket (its
// /cx/instances shows app1's maintenance) and serves without errors.
func TestFleetMaintenanceSurvivesRestarts(t *testing.T) {
	f := startFleetCore(t, fleetOptions{})
	gws := f.gws
	loads := startFleetLoads(t, gws, "/", fleetLoadEvery)
	loads.waitServed(t, gws, 5*time.Second, "app1", 20, time.Time{})

	_, maint := gws[1].mustControl(t, "app1", "maintenance")
	loads.waitServed(t, gws, 5*time.Second, "app2", 20, maint)

	// app1 restarts: a new started_at, which ends a drain but not a
	// maintenance.
	f.app1.Kill()
	restartAt := time.Now()
	f.app1 = startBackend(t, "app1", f.urls, 0, "--listen", f.app1.Addr)
	for _, g := range gws {
		g.waitLog(t, 5*time.Second, "app1's new process", func(e logEntry) bool {
			return (e.Str("event") == "restart" || e.Str("event") == "join") && e.Str("instance") == "app1" && e.Time().After(restartAt)
		})
	}
	time.Sleep(time.Second) // five of its heartbeats: still out
	rss := loads.Stop()
	for i, rs := range rss {
		if late := rs.Since(maint.Add(fleetBudget)).ByInstance()["app1"]; late > 0 {
			t.Errorf("%s started %d requests on app1 after it was put in maintenance (before or after its restart)", gws[i].ID, late)
		}
	}
	checkNoErrors(t, gws, rss)

	// Every gateway restarts: none keeps the state in memory.
	for _, g := range gws {
		g.Kill()
	}
	var up durations
	var after []results
	for _, g := range gws {
		began := time.Now()
		if err := g.start(nil); err != nil {
			t.Fatal(err)
		}
		g.waitUp(t)
		up = append(up, time.Since(began))
	}
	loads = startFleetLoads(t, gws, "/", fleetLoadEvery)
	loads.waitServed(t, gws, 10*time.Second, "app2", 50, time.Time{})
	for _, g := range gws {
		waitFor(t, 5*time.Second, g.ID+" to show app1's maintenance after its restart", func() bool {
			in, err := g.instance("app1")
			return err == nil && in != nil && in.Control != nil && in.Control.State == "maintenance" && in.Control.Gateway == "gw2" && in.Control.Holds
		})
	}
	t.Logf("gateways restarted: site answering %s after start", up)
	time.Sleep(time.Second)

	// Requests started before the call was sent must not reach app1; those
	// started while it was under way may (gw3 applies it before it answers,
	// the others as soon as the bucket has it).
	sent := time.Now()
	_, ready := gws[2].mustControl(t, "app1", "ready")
	loads.waitServed(t, gws, 5*time.Second, "app1", 20, ready)
	after = loads.Stop()
	var readyLag durations
	for i, rs := range after {
		if early := rs.Before(sent).ByInstance()["app1"]; early > 0 {
			t.Errorf("%s (restarted) started %d requests on app1 while it was in maintenance", gws[i].ID, early)
		}
		last := rs.lastStartServedByID("app2", time.Time{})
		readyLag = append(readyLag, last.Sub(ready))
		if late := rs.Since(ready.Add(fleetBudget)).ByInstance()["app2"]; late > 0 {
			t.Errorf("%s started %d requests on app2 more than %v after ready returned", gws[i].ID, late, fleetBudget)
		}
	}
	checkNoErrors(t, gws, after)
	t.Logf("ready call returned -> last new request a gateway started on app2: %s", readyLag)
}

// TestFleetSharedFailure makes app1 fail (502) only the requests that come
// through gw1 (its site adds a header the others do not), three times: gw1
// passes over app1 after its first failure and shares it, and gw2 and gw3
// start no request on app1 later than 100ms after that first failure,
// though they never saw one; every gateway sends app1 requests again
// after fail_timeout (3s), not before. No client error anywhere.
func TestFleetSharedFailure(t *testing.T) {
	const (
		reps        = 3
		failTimeout = 3 * time.Second
		header      = "X-Via-Gw1"
	)
	f := startFleetCore(t, fleetOptions{
		proxyExtra: "fail_timeout 3s",
		siteExtra: func(i int) string {
			if i == 0 {
				return "request_header " + header + " 1"
			}
			return ""
		},
	})
	gws := f.gws
	applied0 := observationsApplied(t, gws)
	loads := startFleetLoads(t, gws, "/", fleetLoadEvery)
	loads.waitServed(t, gws, 5*time.Second, "app1", 20, time.Time{})

	var outLag, backAfter, obsFirst durations
	for r := range reps {
		f.app1.failFor(t, time.Second, http.StatusBadGateway, header)
		var rec failedRecord
		waitFor(t, 5*time.Second, "app1's first failure through gw1", func() bool {
			var err error
			rec, err = f.app1.failed()
			return err == nil && rec.Count > 0
		})
		first := rec.First
		loads.waitServed(t, gws, 5*time.Second, "app2", 20, first)
		waitFor(t, failTimeout+5*time.Second, "app1 to serve every gateway again", func() bool {
			for _, l := range loads {
				if l.Results().Since(first.Add(failTimeout / 2)).ByInstance()["app1"] < 10 {
					return false
				}
			}
			return true
		})
		if rec, err := f.app1.failed(); err == nil {
			t.Logf("rep %d: app1 answered %d failures to gw1's requests, %s from the first to the last", r+1, rec.Count, ms(rec.Last.Sub(rec.First)))
		}
		for i, l := range loads {
			rs := l.Results().Since(first.Add(-time.Second))
			// The last request started on app1 before it came back.
			last := rs.Before(first.Add(failTimeout/2)).lastStartServedByID("app1", time.Time{})
			if !last.IsZero() {
				outLag = append(outLag, last.Sub(first))
			}
			if last.Sub(first) > fleetBudget {
				t.Errorf("rep %d: %s started a request on app1 %s after gw1's first failure; want none later than %v",
					r+1, gws[i].ID, ms(last.Sub(first)), fleetBudget)
			}
			if i > 0 && !last.IsZero() {
				obsFirst = append(obsFirst, firstServed(rs.Since(last), "app2").Start.Sub(first))
			}
			back := firstServed(rs.Since(first.Add(failTimeout/2)), "app1").Start
			backAfter = append(backAfter, back.Sub(first))
			if back.Before(first.Add(failTimeout - fleetBudget)) {
				t.Errorf("rep %d: %s sent app1 requests again %s after the failure; want not before fail_timeout (%v)", r+1, gws[i].ID, ms(back.Sub(first)), failTimeout)
			}
			if back.After(first.Add(failTimeout + time.Second)) {
				t.Errorf("rep %d: %s sent app1 requests again only %s after the failure; want within fail_timeout (%v) + 1s", r+1, gws[i].ID, ms(back.Sub(first)), failTimeout)
			}
		}
		// The next rep starts with app1 back everywhere.
		time.Sleep(500 * time.Millisecond)
	}
	checkNoErrors(t, gws, loads.Stop())
	applied := observationsApplied(t, gws)
	t.Logf("gw1's first failure -> last new request a gateway started on app1: %s (gw1 included); -> first request gw2 and gw3 (which saw no failure) sent to app2: %s",
		outLag, obsFirst)
	t.Logf("gw1's first failure -> first request a gateway sends app1 again: %s (fail_timeout %v)", backAfter, failTimeout)
	t.Logf("observations applied (caddy_cx_observations_applied_total): before %v, after %v", applied0, applied)
	for i := 1; i < len(gws); i++ {
		if applied[i]-applied0[i] < reps {
			t.Errorf("%s applied %.0f observations in %d reps; want at least one each", gws[i].ID, applied[i]-applied0[i], reps)
		}
	}
	if applied[0] != applied0[0] {
		t.Errorf("gw1 applied %.0f observations: its own, or others' of failures that only it saw", applied[0]-applied0[0])
	}
}

// observationsApplied reads caddy_cx_observations_applied_total of each
// gateway.
func observationsApplied(t testing.TB, gws []*fleetGateway) []float64 {
	t.Helper()
	out := make([]float64, len(gws))
	for i, g := range gws {
		m, err := g.metrics()
		if err != nil {
			t.Fatalf("%s: /metrics: %v", g.ID, err)
		}
		out[i] = sum(byLabel(m, "caddy_cx_observations_applied_total", "service"))
	}
	return out
}

// TestFleetGatewayKilled kills each gateway in turn with SIGKILL while
// the other two serve a load: both show it stale within its stale_after
// (from GET /cx/gateways: 3 heartbeat periods), their traffic has no error
// and stays on app1; started again, it is active on both within 2s.
func TestFleetGatewayKilled(t *testing.T) {
	f := startFleetCore(t, fleetOptions{})
	gws := f.gws
	var staleIn, activeIn durations
	for r, victim := range gws {
		others := slices.Delete(slices.Clone(gws), r, r+1)
		doc, err := others[0].gateways()
		if err != nil {
			t.Fatal(err)
		}
		staleAfter := time.Duration(doc.gateway(fleetPrefix, victim.ID).StaleAfterSeconds * float64(time.Second))
		// A gateway restarted by the previous round routes to app1 once it
		// has heard it (until then, to whom it heard first).
		waitAllRouteTo(t, others, 5*time.Second, "app1")
		loads := startFleetLoads(t, others, "/", fleetLoadEvery)
		loads.waitServed(t, others, 5*time.Second, "app1", 20, time.Time{})
		killAt := time.Now()
		victim.Kill()
		for _, g := range others {
			var last *gatewayStatus
			if !poll(staleAfter+3*time.Second, func() bool {
				doc, err := g.gateways()
				last = doc.gateway(fleetPrefix, victim.ID)
				return err == nil && last != nil && last.State == "stale"
			}) {
				t.Fatalf("%s does not show killed %s stale %v after the kill (stale_after %v); last: %v", g.ID, victim.ID, staleAfter+3*time.Second, staleAfter, last)
			}
			d := time.Since(killAt)
			staleIn = append(staleIn, d)
			if d > staleAfter+300*time.Millisecond {
				t.Errorf("%s showed killed %s stale %s after the kill; want within its stale_after (%v)", g.ID, victim.ID, ms(d), staleAfter)
			}
		}
		time.Sleep(500 * time.Millisecond)
		rss := loads.Stop()
		checkNoErrors(t, others, rss)
		for i, rs := range rss {
			if n := rs.ByInstance()["app2"]; n > 0 {
				t.Errorf("%s: %d requests went to app2 while %s was killed: its traffic changed", others[i].ID, n, victim.ID)
			}
		}
		startAt := time.Now()
		if err := victim.start(nil); err != nil {
			t.Fatal(err)
		}
		victim.waitUp(t)
		waitFleetActive(t, gws, 10*time.Second)
		activeIn = append(activeIn, time.Since(startAt))
	}
	t.Logf("SIGKILL -> the others show the gateway stale: %s (stale_after 3s)", staleIn)
	t.Logf("restart -> active on every gateway: %s", activeIn)
}

// TestFleetNATSNodeDown kills the NATS node gw1 is connected to under
// load: after the cluster elects new leaders, a drain and a ready through
// gw1 still apply on every gateway within 100ms, and a failure only gw1
// sees still takes app1 out everywhere within 100ms. No client error.
func TestFleetNATSNodeDown(t *testing.T) {
	f := startFleetCore(t, fleetOptions{
		proxyExtra: "fail_timeout 3s",
		siteExtra: func(i int) string {
			if i == 0 {
				return "request_header X-Via-Gw1 1"
			}
			return ""
		},
	})
	gws := f.gws
	victim := 0
	if doc, err := gws[0].gateways(); err == nil {
		if self := doc.gateway(fleetPrefix, "gw1"); self != nil {
			for i, n := range f.nodes {
				if n.Name == self.NATSServer {
					victim = i
				}
			}
			t.Logf("gw1 is connected to %q", self.NATSServer)
		}
	}
	loads := startFleetLoads(t, gws, "/", fleetLoadEvery)
	loads.waitServed(t, gws, 5*time.Second, "app1", 20, time.Time{})

	killAt := time.Now()
	f.nodes[victim].Kill()
	survivors := slices.Delete(slices.Clone(f.nodes), victim, victim+1)
	leader := waitJetStream(t, survivors, 20*time.Second)
	t.Logf("NATS %s killed -> JetStream meta leader agreed by the survivors: %s", f.nodes[victim].Name, ms(leader))

	// Control: retried until the bucket answers again.
	var drained time.Time
	var attempts []string
	if !poll(20*time.Second, func() bool {
		_, at, err := gws[0].control("app1", "drain", fleetPrefix)
		if err != nil {
			attempts = append(attempts, err.Error())
			return false
		}
		drained = at
		return true
	}) {
		t.Fatalf("no drain through gw1 succeeded within 20s of the NATS node's death; %d attempts, last: %v", len(attempts), attempts[len(attempts)-1:])
	}
	t.Logf("NATS node killed -> first successful drain returned %s later, after %d failed attempts %q", ms(drained.Sub(killAt)), len(attempts), attempts[:min(len(attempts), 3)])
	drainSeen := holdApplied(t, gws, "app1", true, drained, 30*time.Second)
	t.Logf("drain returned -> each gateway shows app1 held (/cx/instances, polled): %v", drainSeen)
	loads.waitServed(t, gws, 5*time.Second, "app2", 20, drained)
	var drainLag, readyLag, obsLag durations
	for i, l := range loads {
		rs := l.Results()
		drainLag = append(drainLag, rs.lastStartServedByID("app1", killAt).Sub(drained))
		if late := rs.Since(drained.Add(fleetBudget)).ByInstance()["app1"]; late > 0 {
			t.Errorf("%s started %d requests on app1 more than %v after the drain returned (NATS node down)", gws[i].ID, late, fleetBudget)
		}
	}
	_, ready := gws[0].mustControl(t, "app1", "ready")
	readySeen := holdApplied(t, gws, "app1", false, ready, 30*time.Second)
	t.Logf("ready returned -> each gateway shows app1 no longer held: %v", readySeen)
	loads.waitServed(t, gws, 5*time.Second, "app1", 20, ready)
	for i, l := range loads {
		rs := l.Results()
		readyLag = append(readyLag, rs.lastStartServedByID("app2", drained).Sub(ready))
		if late := rs.Since(ready.Add(fleetBudget)).ByInstance()["app2"]; late > 0 {
			t.Errorf("%s started %d requests on app2 more than %v after ready returned (NATS node down)", gws[i].ID, late, fleetBudget)
		}
	}

	// Observations.
	f.app1.failFor(t, time.Second, http.StatusBadGateway, "X-Via-Gw1")
	var rec failedRecord
	waitFor(t, 5*time.Second, "app1's first failure through gw1", func() bool {
		var err error
		rec, err = f.app1.failed()
		return err == nil && rec.Count > 0
	})
	loads.waitServed(t, gws, 5*time.Second, "app2", 20, rec.First)
	for i, l := range loads {
		rs := l.Results()
		last := rs.Before(rec.First.Add(time.Second)).lastStartServedByID("app1", ready)
		obsLag = append(obsLag, last.Sub(rec.First))
		if last.Sub(rec.First) > fleetBudget {
			t.Errorf("%s started a request on app1 %s after gw1's first failure (NATS node down); want none after %v", gws[i].ID, ms(last.Sub(rec.First)), fleetBudget)
		}
	}
	checkNoErrors(t, gws, loads.Stop())
	t.Logf("with a NATS node down: drain returned -> last request on app1: %s; ready returned -> last request on app2: %s; gw1's first failure -> last request on app1: %s",
		drainLag, readyLag, obsLag)
}

// holdApplied polls every gateway's /cx/instances until each shows id
// held by a control entry (hold) or not (!hold), and returns how long
// after `since` each one did; a gateway that did not within timeout fails
// the test, after all were waited for.
func holdApplied(t testing.TB, gws []*fleetGateway, id string, hold bool, since time.Time, timeout time.Duration) []string {
	t.Helper()
	out := make([]string, len(gws))
	var wg sync.WaitGroup
	for i, g := range gws {
		wg.Go(func() {
			if poll(timeout, func() bool {
				in, err := g.instance(id)
				held := err == nil && in != nil && in.Control != nil && in.Control.Holds
				return err == nil && held == hold
			}) {
				out[i] = g.ID + " " + ms(time.Since(since))
			} else {
				out[i] = g.ID + " never"
			}
		})
	}
	wg.Wait()
	for _, o := range out {
		if strings.HasSuffix(o, " never") {
			t.Errorf("%s did not show %s's hold as %v within %v: %v", strings.TrimSuffix(o, " never"), id, hold, timeout, out)
		}
	}
	return out
}

// TestFleetChurnSoak churns instances for 60s (CX_FLEET_SOAK=10s for a
// quick run) at one event a second: one joins, one leaves (SIGTERM), one
// joins, one crashes (SIGKILL), ...; all at priority 0 beside a steady
// app0 (priority 0 too), so every event changes the primary set. Every
// 100ms the three gateways' primary is read at once: they name the same in
// at least 99.5% of the samples. A load through each gateway sees no
// error.
func TestFleetChurnSoak(t *testing.T) {
	duration := envDuration(t, "CX_FLEET_SOAK", 60*time.Second)
	nodes := startNATSClusterJS(t, 3)
	urls := strings.Join(clusterURLs(nodes), ",")
	startBackend(t, "app0", urls, 0)
	gws := startFleet(t, nodes, 3, fleetOptions{})
	waitAllRouteTo(t, gws, 10*time.Second, "app0")
	loads := startFleetLoads(t, gws, "/", 20*time.Millisecond)

	type sample struct {
		at    time.Time
		ps    [][]string
		agree bool
	}
	var smu sync.Mutex
	var samples []sample
	sampler := startSampler(100*time.Millisecond, func() {
		at := time.Now()
		ps, agree := primaries(gws, fleetPrefix)
		smu.Lock()
		samples = append(samples, sample{at, ps, agree})
		smu.Unlock()
	})

	var alive []*backend
	var reapers sync.WaitGroup
	var joins, terms, kills int
	seq := 0
	join := func() {
		seq++
		joins++
		alive = append(alive, startBackend(t, fmt.Sprintf("churn%d", seq), urls, 0))
	}
	join()
	join()
	start := time.Now()
	tick := time.NewTicker(time.Second)
	for i := 0; time.Since(start) < duration; i++ {
		<-tick.C
		switch i % 4 {
		case 0, 2:
			join()
		case 1:
			b := alive[0]
			alive = alive[1:]
			terms++
			b.Term()
			reapers.Go(func() { b.Wait(30 * time.Second) })
		case 3:
			b := alive[0]
			alive = alive[1:]
			kills++
			b.Kill()
		}
	}
	tick.Stop()
	time.Sleep(2 * time.Second)
	sampler.stop()
	reapers.Wait()
	checkNoErrors(t, gws, loads.Stop())

	smu.Lock()
	defer smu.Unlock()
	agreed := 0
	var split []sample
	for _, s := range samples {
		if s.agree {
			agreed++
		} else {
			split = append(split, s)
		}
	}
	// The samples must have seen the churn: the primary set changed
	// between agreeing samples about once per event.
	changes := 0
	var prev []string
	for _, s := range samples {
		if !s.agree {
			continue
		}
		if prev != nil && !slices.Equal(prev, s.ps[0]) {
			changes++
		}
		prev = s.ps[0]
	}
	events := joins + terms + kills
	t.Logf("the agreed primary set changed %d times between samples (%d churn events)", changes, events)
	if changes < events/2 {
		t.Errorf("the primary set changed only %d times in the samples for %d churn events: the sampling did not see the churn", changes, events)
	}
	pct := 100 * float64(agreed) / float64(len(samples))
	t.Logf("churn for %v: %d joins, %d SIGTERM leaves, %d SIGKILL crashes", duration, joins, terms, kills)
	t.Logf("primary agreement of the 3 gateways: %d of %d samples (every 100ms) = %.2f%%", agreed, len(samples), pct)
	for i, s := range split {
		if i == 10 {
			t.Logf("... and %d more disagreeing samples", len(split)-10)
			break
		}
		t.Logf("disagreeing sample at +%s: %v", ms(s.at.Sub(start)), s.ps)
	}
	if pct < 99.5 {
		t.Errorf("the gateways named the same primary in %.2f%% of the samples; want at least 99.5%%", pct)
	}
	if len(samples) < int(duration/(100*time.Millisecond))/2 {
		t.Errorf("only %d samples in %v: the sampler could not keep its 100ms pace", len(samples), duration)
	}
}

// TestFleetHostileInput attacks the fleet's subjects under load on all
// three gateways:
//
//   - spoofed heartbeats for live gw2 on cx.ha.gw.gw2 (an older process,
//     the same process with a seq 2^50 ahead, a process 100 years ahead
//     leaving), each at 100 msg/s for 3s, naming primary "evil";
//   - an observation flood naming app1 (its real started_at) from "evil",
//     a publisher that is no announced gateway, and on gw2's subject with
//     another started_at than gw2's;
//   - garbage on cx.ha.gw.* and cx.ha.obs.*: random bytes, oversized,
//     truncated JSON, the other kind's message, an instance heartbeat.
//
// Every gateway keeps gw2 active with its real started_at and primary,
// lists no other gateway, applies no observation and routes only to app1
// (no request fails); the rejections are counted in
// caddy_cx_fleet_messages_total (result rejected or ignored, at least as
// many as were sent to the gateway, per kind); goroutines and RSS come
// back within bounds and the logs grow by less than 256 KiB.
func TestFleetHostileInput(t *testing.T) {
	f := startFleetCore(t, fleetOptions{})
	gws := f.gws
	doc, err := gws[0].gateways()
	if err != nil {
		t.Fatal(err)
	}
	gw2 := *doc.gateway(fleetPrefix, "gw2")
	app1, err := gws[0].instance("app1")
	if err != nil || app1 == nil {
		t.Fatalf("app1 in gw1's /cx/instances: %v %v", app1, err)
	}

	loads := startFleetLoads(t, gws, "/", fleetLoadEvery)
	loads.waitServed(t, gws, 5*time.Second, "app1", 20, time.Time{})
	type base struct {
		rt      runtimeStats
		rss     uint64
		msgs    map[string]float64 // kind/result
		logSize int
	}
	bases := make([]base, len(gws))
	readMsgs := func(g *fleetGateway) map[string]float64 {
		m, err := g.metrics()
		if err != nil {
			t.Fatalf("%s: /metrics: %v", g.ID, err)
		}
		out := map[string]float64{}
		for _, s := range m {
			switch s.Name {
			case "caddy_cx_fleet_messages_total":
				out[s.Labels["kind"]+"/"+s.Labels["result"]] += s.Value
			case "caddy_cx_observations_applied_total":
				out["applied"] += s.Value
			}
		}
		return out
	}
	for i, g := range gws {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		rt, err := g.runtimeStats()
		if err != nil {
			t.Fatal(err)
		}
		rss, err := rssOf(g.Pid())
		if err != nil {
			t.Fatal(err)
		}
		bases[i] = base{rt: rt, rss: rss, msgs: readMsgs(g), logSize: len(g.Log())}
		t.Logf("%s before: %s, RSS %.1f MiB, fleet messages %s", g.ID, rt, mib(rss), formatCounts(bases[i].msgs))
	}

	// Watch the fleet view during the attack: gw2 stays itself, nobody
	// else appears.
	var viewMu sync.Mutex
	var viewErrs []string
	var views atomic.Int64
	watch := startSampler(100*time.Millisecond, func() {
		for _, g := range gws {
			if g.ID == "gw2" {
				continue
			}
			doc, err := g.gateways()
			if err != nil {
				continue
			}
			views.Add(1)
			var bad []string
			st := doc.gateway(fleetPrefix, "gw2")
			switch {
			case st == nil:
				bad = append(bad, "gw2 absent")
			case st.State != "active" || !st.StartedAt.Equal(gw2.StartedAt) || !slices.Equal(st.Primary, []string{"app1"}):
				bad = append(bad, "gw2 "+st.String())
			}
			for _, s := range doc.Services {
				for _, other := range s.Gateways {
					if !slices.Contains([]string{"gw1", "gw2", "gw3"}, other.ID) {
						bad = append(bad, "listed "+other.ID)
					}
				}
			}
			if len(bad) > 0 {
				viewMu.Lock()
				viewErrs = append(viewErrs, fmt.Sprintf("%s %s: %s", time.Now().Format("15:04:05.000"), g.ID, strings.Join(bad, "; ")))
				viewMu.Unlock()
			}
		}
	})

	nc := attacker(t, f.nodes[0].URL)
	sent := map[string]int{}      // by subject kind: gw, obs
	sentToGw2 := map[string]int{} // ... of which on gw2's own subjects
	pub := func(kind, subject string, data []byte) {
		if err := nc.Publish(subject, data); err == nil {
			sent[kind]++
			if strings.HasSuffix(subject, ".gw2") {
				sentToGw2[kind]++
			}
		}
	}
	attackStart := time.Now()
	// (a) spoofed heartbeats of gw2.
	spoofs := []func(seq int) string{
		func(seq int) string { // an older process
			return gatewayJSON("gw2", "active", gw2.StartedAt.Add(-time.Hour), int64(seq+1_000_000))
		},
		func(seq int) string { // the same process, seq far ahead
			return gatewayJSON("gw2", "active", gw2.StartedAt, int64(1)<<50+int64(seq))
		},
		func(seq int) string { // a process 100 years ahead, leaving
			return gatewayJSON("gw2", "leaving", gw2.StartedAt.AddDate(100, 0, 0), int64(seq+1))
		},
	}
	for i := range 300 {
		for _, spoof := range spoofs {
			pub("gw", fleetPrefix+".gw.gw2", []byte(spoof(i)))
		}
		if i%10 == 9 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	// (b) observation floods.
	for i := range 5000 {
		pub("obs", fleetPrefix+".obs.evil", []byte(observationJSON("evil", time.Now().Add(-time.Minute), int64(i+1), "app1", app1.StartedAt)))
	}
	for i := range 1000 {
		pub("obs", fleetPrefix+".obs.gw2", []byte(observationJSON("gw2", gw2.StartedAt.Add(-time.Hour), int64(i+1), "app1", app1.StartedAt)))
	}
	// (c) garbage.
	garbage := [][]byte{
		[]byte(`{"proto":1,"kind":`),
		[]byte(`not json`),
		[]byte(`null`),
		[]byte(`[]`),
		[]byte(`{"proto":1,"kind":"instance"}`),
		[]byte(`{"proto":1,"id":"gw9","url":"http://127.0.0.1:1","state":"ready","started_at":"2026-01-01T00:00:00Z","seq":1,"interval_ms":200}`),
		[]byte(strings.Repeat("\xff", 300)),
		[]byte(`{"proto":1,"kind":"gateway","id":"gw9","state":"active","started_at":"2026-01-01T00:00:00Z","seq":1,"interval_ms":1000,"primary":[` + strings.Repeat(`"x",`, 5000) + `"x"]}`),
	}
	obsOnGw := observationJSON("gw9", time.Now(), 1, "app1", app1.StartedAt)
	gwOnObs := gatewayJSON("gw9", "active", time.Now(), 1)
	for i := range 2000 {
		g := garbage[i%len(garbage)]
		pub("gw", fmt.Sprintf("%s.gw.gw%d", fleetPrefix, 9+i%3), g)
		pub("obs", fmt.Sprintf("%s.obs.gw%d", fleetPrefix, 9+i%3), g)
		if i%100 == 0 {
			pub("gw", fleetPrefix+".gw.gw9", []byte(obsOnGw))
			pub("obs", fleetPrefix+".obs.gw9", []byte(gwOnObs))
		}
	}
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatalf("flushing the attack: %v", err)
	}
	attackTook := time.Since(attackStart)
	t.Logf("attack sent in %s: %d on %s.gw.*, %d on %s.obs.*", ms(attackTook), sent["gw"], fleetPrefix, sent["obs"], fleetPrefix)

	// Every message counted (each gateway gets all of them). gw2 may
	// take those on its own subjects for its own, uncounted.
	for i, g := range gws {
		var got map[string]float64
		counted := func(kind string) float64 {
			return got[kind+"/rejected"] + got[kind+"/ignored"] - bases[i].msgs[kind+"/rejected"] - bases[i].msgs[kind+"/ignored"]
		}
		wantGw, wantObs := sent["gw"], sent["obs"]
		if g.ID == "gw2" {
			wantGw, wantObs = wantGw-sentToGw2["gw"], wantObs-sentToGw2["obs"]
		}
		if !poll(10*time.Second, func() bool {
			got = readMsgs(g)
			return counted("heartbeat") >= float64(wantGw) && counted("observation") >= float64(wantObs)
		}) {
			t.Errorf("%s counted %.0f heartbeats and %.0f observations rejected or ignored; %d and %d were sent (by kind/result now: %s)",
				g.ID, counted("heartbeat"), counted("observation"), wantGw, wantObs, formatCounts(got))
		}
		if g.ID == "gw2" {
			t.Logf("gw2 counted %.0f of the %d heartbeats and %.0f of the %d observations on its own subjects as rejected or ignored",
				counted("heartbeat")-float64(wantGw), sentToGw2["gw"], counted("observation")-float64(wantObs), sentToGw2["obs"])
		}
		t.Logf("%s fleet messages after the attack: %s", g.ID, formatCounts(got))
		if n := got["applied"] - bases[i].msgs["applied"]; n != 0 {
			t.Errorf("%s applied %.0f observations during the attack; app1 never failed", g.ID, n)
		}
	}
	time.Sleep(time.Second)
	watch.stop()
	rss := loads.Stop()
	checkNoErrors(t, gws, rss)
	for i, rs := range rss {
		if n := rs.ByInstance()["app2"]; n > 0 {
			t.Errorf("%s sent %d requests to app2 during the attack: the attack changed routing", gws[i].ID, n)
		}
	}
	viewMu.Lock()
	t.Logf("fleet view sampled %d times during the attack, %d wrong", views.Load(), len(viewErrs))
	for i, e := range viewErrs {
		if i == 10 {
			t.Errorf("... and %d more", len(viewErrs)-10)
			break
		}
		t.Errorf("fleet view during the attack: %s", e)
	}
	viewMu.Unlock()
	for _, g := range gws {
		if in, _ := g.instance("gw9"); in != nil {
			t.Errorf("%s lists gw9, sent as an instance heartbeat on a gateway subject, as an instance (%+v)", g.ID, *in)
		}
	}

	// Bounds. The test's own idle keep-alive connections to the admin
	// APIs (each a goroutine there) are closed first.
	for i, g := range gws {
		var after runtimeStats
		settled := poll(10*time.Second, func() bool {
			http.DefaultTransport.(*http.Transport).CloseIdleConnections()
			var err error
			after, err = g.runtimeStats()
			return err == nil && after.Goroutines <= bases[i].rt.Goroutines+20
		})
		rss, _ := rssOf(g.Pid())
		// The admin API logs each of this test's requests: not the attack's.
		logGrowth := 0
		for line := range strings.SplitSeq(g.Log()[bases[i].logSize:], "\n") {
			if !strings.Contains(line, `"logger":"admin.api"`) {
				logGrowth += len(line) + 1
			}
		}
		t.Logf("%s after: %s, RSS %.1f MiB (%+.1f MiB), log +%d bytes (admin API request lines not counted)", g.ID, after, mib(rss), mib(rss)-mib(bases[i].rss), logGrowth)
		if !settled {
			t.Errorf("%s: goroutines %d after the attack, %d before: want at most +20; the most common stacks now:\n%s",
				g.ID, after.Goroutines, bases[i].rt.Goroutines, g.goroutineGroups(8))
		}
		t.Logf("%s: log lines during the attack, by message and reason: %s", g.ID, logCounts(g.Log()[bases[i].logSize:], 8))
		if rss > bases[i].rss+100<<20 {
			t.Errorf("%s: RSS %.1f MiB after the attack, %.1f MiB before: want at most +100 MiB (race build)", g.ID, mib(rss), mib(bases[i].rss))
		}
		if logGrowth > 256<<10 {
			t.Errorf("%s: its log grew by %d bytes during the attack: rejections must be logged at a bounded rate", g.ID, logGrowth)
		}
	}
}

// gatewayJSON is a gateway heartbeat (heartbeat.GatewayMessage) naming
// primary "evil".
func gatewayJSON(id, state string, startedAt time.Time, seq int64) string {
	return fmt.Sprintf(`{"proto":1,"kind":"gateway","id":%q,"state":%q,"started_at":%q,"seq":%d,"interval_ms":1000,"version":"evil","nats_server":"node1","primary":["evil"],"inflight":0,"control":true}`,
		id, state, startedAt.UTC().Format(time.RFC3339Nano), seq)
}

// observationJSON is an observation (heartbeat.Observation) of gateway
// gw that instance id (process startedAt) failed.
func observationJSON(gw string, gwStarted time.Time, seq int64, id string, startedAt time.Time) string {
	return fmt.Sprintf(`{"proto":1,"kind":"observation","gateway":%q,"started_at":%q,"seq":%d,"failed":[{"id":%q,"started_at":%q}]}`,
		gw, gwStarted.UTC().Format(time.RFC3339Nano), seq, id, startedAt.UTC().Format(time.RFC3339Nano))
}

// goroutineGroups returns the n largest groups of identical goroutine
// stacks of the gateway (admin /debug/pprof/goroutine?debug=1).
func (g *gateway) goroutineGroups(n int) string {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + g.AdminAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	// debug=1 groups identical stacks already, largest first: "N @ ...".
	groups := strings.Split(string(body), "\n\n")
	if len(groups) > n+1 {
		groups = groups[:n+1]
	}
	return truncate(strings.Join(groups, "\n\n"), 12000)
}

// logCounts counts JSON log lines by msg (and reason, event), the n most
// frequent.
func logCounts(log string, n int) string {
	counts := map[string]int{}
	for line := range strings.SplitSeq(log, "\n") {
		var e logEntry
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		key := e.Str("msg")
		for _, f := range []string{"event", "reason"} {
			if v := e.Str(f); v != "" {
				key += " " + f + "=" + v
			}
		}
		counts[key]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return counts[b] - counts[a] })
	var parts []string
	for i, k := range keys {
		if i == n {
			break
		}
		parts = append(parts, fmt.Sprintf("%q x%d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}
