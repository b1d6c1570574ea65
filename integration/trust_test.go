package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// The trust boundary (issue 10): each attack of a hostile publisher on
// the heartbeat subjects, or of a client, replayed against the built
// gateway. Every test asserts that the attack is refused: no request
// reaches an address it should not (a tripwire listener or the gateway's
// own admin API stands in for it), the victim keeps serving a steady load
// with no client error, the status page and admin API answer 200, the
// gateway's memory and file descriptors stay bounded and nothing is
// logged with a secret. Each logs, prefixed "measured:", the figures of
// the attack on the build under test.

// keepAnnouncing publishes hb (seq counting up) every 200ms until the
// returned stop is called.
func keepAnnouncing(t testing.TB, nc *nats.Conn, hb fakeHB) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if err := nc.Publish("cx.ha.hb."+hb.ID, hb.encode()); err != nil {
				t.Errorf("attacker: publishing %s: %v", hb.ID, err)
				return
			}
			hb.Seq++
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// waitSettled waits until the gateway has taken a position on the fake
// id: it logs its join (admitted) or counts a rejection of reason. It
// reports whether the fake was admitted.
func waitSettled(t testing.TB, gw *gateway, id string, rej0 map[string]float64, reason string) (admitted bool) {
	t.Helper()
	joined := membershipEvent("join", id, time.Time{})
	waitFor(t, 5*time.Second, "the gateway to admit or reject "+id, func() bool {
		if _, ok := gw.findLog(joined); ok {
			admitted = true
			return true
		}
		ms, err := gw.metrics()
		return err == nil && byLabel(ms, "caddy_cx_heartbeats_rejected_total", "reason")[reason] > rej0[reason]
	})
	return admitted
}

// checkStatusQuiet reads the admin API's status document, empty if it
// cannot.
func (g *gateway) checkStatusQuiet() statusDoc {
	var doc statusDoc
	_, body, err := statusGet("http://" + g.AdminAddr + "/cx/instances")
	if err == nil {
		_ = json.Unmarshal(body, &doc)
	}
	return doc
}

// adminConfig is GET /config/ read directly from the admin API.
func adminConfig(t testing.TB, g *gateway) string {
	t.Helper()
	resp, err := http.Get("http://" + g.AdminAddr + "/config/")
	if err != nil {
		t.Fatalf("GET /config/: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// throughSite sends method path with body to the gateway's site with the
// Host header host, and returns the status, X-Instance and body.
func throughSite(g *gateway, method, path, host, body string) (int, string, string) {
	req, err := http.NewRequest(method, g.URL+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err.Error()
	}
	req.Host = host
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Instance"), string(b)
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// ------------------------------------------------------ 1: own listeners

// TestTrustOwnListenersAsInstance announces, with allow_networks
// 127.0.0.0/8, an instance at the gateway's own admin API (priority
// -1000, so it would be primary) and one at its embedded NATS server.
// Both are rejected with reason loop: no try is made at them, GET
// /config/ and PUT /config/... sent to the site with the admin API's
// Host never reach the admin API (they reach app1) and the config is
// unchanged; app1 serves all of a steady load.
func TestTrustOwnListenersAsInstance(t *testing.T) {
	t.Run("admin API", func(t *testing.T) {
		r := startTrustRig(t, loopbackNets, "")
		gw := r.gw
		cfg0 := adminConfig(t, gw)
		rej0 := gw.rejected(t)
		load, watch := underLightLoad(t, gw)

		stop := keepAnnouncing(t, r.nc, newFake("evil", "http://"+gw.AdminAddr, -1000))
		admitted := waitSettled(t, gw, "evil", rej0, "loop")
		if admitted {
			// let it become primary, as it would on a build without the guard
			waitFor(t, 3*time.Second, "evil to be primary", func() bool {
				return gw.checkStatusQuiet().primaryIs("evil")
			})
		}
		code, inst, body := throughSite(gw, http.MethodGet, "/config/", gw.AdminAddr, "")
		readServed := code == http.StatusOK && strings.Contains(body, `"apps"`)
		wcode, winst, wbody := throughSite(gw, http.MethodPut, "/config/apps/http/grace_period", gw.AdminAddr, `"1s"`)
		time.Sleep(500 * time.Millisecond) // the attack goes on under load
		stop()
		rs := load.Stop()
		watch.check(t)
		cfg1 := adminConfig(t, gw)
		tries := gw.triesAt(t, "evil")
		t.Logf("measured: evil admitted: %s; admin /config/ served to the client: %s (status %d, X-Instance %q); PUT /config/... status %d (X-Instance %q); config rewritten: %s; tries at the admin API: %.0f",
			yes(admitted), yes(readServed), code, inst, wcode, winst, yes(cfg1 != cfg0), tries)
		t.Logf("measured: load %s", rs.Summary())

		if readServed {
			t.Errorf("GET /config/ through the site was answered by the admin API: %s", truncate(body, 200))
		}
		if inst != "app1" {
			t.Errorf("GET /config/ through the site: status %d from %q, want an answer of app1 (the only real instance)", code, inst)
		}
		if winst != "app1" {
			t.Errorf("PUT /config/... through the site: status %d from %q, want an answer of app1: %s", wcode, winst, truncate(wbody, 200))
		}
		if cfg1 != cfg0 {
			t.Errorf("the gateway's config changed during the attack:\nbefore %s\nafter  %s", truncate(cfg0, 300), truncate(cfg1, 300))
		}
		if tries > 0 {
			t.Errorf("the gateway made %.0f tries at the admin API as an instance", tries)
		}
		gw.waitRejected(t, rej0, "loop", 2*time.Second)
		if !gw.rejectLogged("loop", "evil") {
			t.Errorf(`no "heartbeat rejected" log line with reason loop for evil`)
		}
		checkVictimServed(t, rs, "app1")
		gw.checkStatus(t, "after the attack")
	})

	t.Run("embedded NATS", func(t *testing.T) {
		natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		gw := startGateway(t, trustCaddyfile("", "embedded_nats "+natsAddr, loopbackNets, ""))
		startBackend(t, "app1", "nats://"+natsAddr, 0)
		waitRoutedTo(t, gw, "app1")
		nc := attacker(t, "nats://"+natsAddr)
		rej0 := gw.rejected(t)
		load, watch := underLightLoad(t, gw)

		stop := keepAnnouncing(t, nc, newFake("evil", "http://"+natsAddr, -1000))
		admitted := waitSettled(t, gw, "evil", rej0, "loop")
		time.Sleep(time.Second) // the attack goes on under load
		stop()
		rs := load.Stop()
		watch.check(t)
		tries := gw.triesAt(t, "evil")
		t.Logf("measured: an instance at the embedded NATS port admitted: %s; tries at it: %.0f; load %s", yes(admitted), tries, rs.Summary())
		if admitted {
			t.Errorf("the gateway admitted an instance at its own embedded NATS server (%s)", natsAddr)
		}
		if tries > 0 {
			t.Errorf("the gateway made %.0f tries at its own embedded NATS server as an instance", tries)
		}
		gw.waitRejected(t, rej0, "loop", 2*time.Second)
		checkVictimServed(t, rs, "app1")
		gw.checkStatus(t, "after the attack")
	})
}

// primaryIs reports whether id is the only primary of the first service.
func (d statusDoc) primaryIs(id string) bool {
	return len(d.Services) > 0 && len(d.Services[0].Primary) == 1 && d.Services[0].Primary[0] == id
}

// ----------------------------------------------------- 2: self-loops

// TestTrustSelfLoopUnspecified announces, to a cx_proxy without
// allow_networks (the default), the gateway's own site port on
// an unspecified address (http://0.0.0.0:PORT, http://[::]:PORT), priority
// -1000, for 300ms (then leaving, which bounds the damage on a build
// without the guard) under a steady load. It is rejected with reason
// loop: no try at it, the gateway's file descriptors stay within +100 of
// their level before and its RSS within +50 MiB, and app1 serves every
// request within 1s.
func TestTrustSelfLoopUnspecified(t *testing.T) {
	for _, host := range []string{"0.0.0.0", "[::]"} {
		t.Run(host, func(t *testing.T) {
			r := startTrustRig(t, "", "")
			gw := r.gw
			_, port, _ := strings.Cut(gw.SiteAddr, ":")
			rej0 := gw.rejected(t)
			load := startLoad(t, gw.URL+"/", 100*time.Millisecond)
			load.waitServed(t, 5*time.Second, "app1", 3, time.Time{})
			watch := watchGateway(t, gw)

			fake := newFake("loop", "http://"+host+":"+port, -1000)
			publish(t, r.nc, fake)
			time.Sleep(300 * time.Millisecond)
			fake.Seq, fake.State = 2, "leaving"
			publish(t, r.nc, fake)
			time.Sleep(1500 * time.Millisecond) // chains started in the window unwind
			rs := load.Stop()
			watch.check(t)
			tries := gw.triesAt(t, "loop")
			t.Logf("measured: url %s: tries at the fake (the recursion's depth): %.0f; load %s", fake.URL, tries, rs.Summary())
			if tries > 0 {
				t.Errorf("the gateway proxied %.0f tries to itself through %s", tries, fake.URL)
			}
			if slow := rs.slower(time.Second); len(slow) > 0 {
				t.Errorf("%d requests took over 1s; first: %s", len(slow), slow[0])
			}
			gw.waitRejected(t, rej0, "loop", 2*time.Second)
			checkVictimServed(t, rs, "app1")
			gw.checkStatus(t, "after the attack")
		})
	}
}

// --------------------------------------------- 3: identity of a process

// victimStartedAt reads app1's started_at as the status JSON shows it
// (to the nanosecond): what an attacker sees.
func victimStartedAt(t testing.TB, gw *gateway) string {
	t.Helper()
	_, _, _, _, started, ok := gw.checkStatus(t, "before the attack").instance("app1")
	if !ok || started == "" {
		t.Fatalf("app1's started_at is not on the status JSON")
	}
	return started
}

// TestTrustIdentityTakeover replays the attacks on one instance's
// identity against app1, the only instance, under a steady load. The
// attacker's url is a tripwire; it must accept no connection, app1 must
// serve every request, never turn stale or left, and keep its url.
//
//   - same started_at: app1's started_at (read off the status JSON), seq
//     app1's + 2^50, another url, every 200ms for 2s: an id conflict,
//     ignored (membership_events_total{event="conflict"} counts it);
//   - leaving from the future: one `leaving` with started_at 100 years
//     ahead: rejected with reason clock;
//   - older process flood: 50 messages/s for 3s with a started_at an hour
//     before app1's (and interval_ms 60000, the slowest rate budget): they
//     do not use up app1's rate budget (app1's
//     heartbeats stay heard: their age stays under 800ms).
func TestTrustIdentityTakeover(t *testing.T) {
	cases := []struct {
		name   string
		attack func(t *testing.T, r *trustRig, wire *tripwire, started string)
		reason string // the rejection counted, "" for none in particular
	}{
		{"same started_at, seq+2^50, other url", func(t *testing.T, r *trustRig, wire *tripwire, started string) {
			publishFor(t, r.nc, 200*time.Millisecond, 2*time.Second, func(i int) fakeHB {
				hb := newFake("app1", "http://"+wire.Addr, 0)
				hb.StartedAt, hb.Seq = started, 1<<50+int64(i)
				return hb
			})
		}, ""},
		{"leaving 100 years ahead", func(t *testing.T, r *trustRig, wire *tripwire, started string) {
			hb := newFake("app1", r.app1.URL, 0)
			hb.StartedAt, hb.State = rfc3339(time.Now().AddDate(100, 0, 0)), "leaving"
			publish(t, r.nc, hb)
			time.Sleep(2 * time.Second)
		}, "clock"},
		{"50 msg/s from an older process", func(t *testing.T, r *trustRig, wire *tripwire, started string) {
			at, err := time.Parse(time.RFC3339Nano, started)
			if err != nil {
				t.Fatalf("app1's started_at %q: %v", started, err)
			}
			// app1 heartbeats every 200ms: while its heartbeats are heard,
			// the age of the last one stays well under 800ms.
			var maxAge atomic.Int64 // ms
			ages := startSampler(20*time.Millisecond, func() {
				if age := r.gw.checkStatusQuiet().heartbeatAge("app1"); age >= 0 && int64(age*1000) > maxAge.Load() {
					maxAge.Store(int64(age * 1000))
				}
			})
			publishFor(t, r.nc, 20*time.Millisecond, 3*time.Second, func(i int) fakeHB {
				hb := newFake("app1", "http://"+wire.Addr, 0)
				hb.StartedAt, hb.Seq = rfc3339(at.Add(-time.Hour)), int64(i+1)
				hb.IntervalMS = 60000 // the slowest rate a publisher may claim
				return hb
			})
			ages.stop()
			t.Logf("measured: app1's heartbeat age peaked at %dms during the flood (it heartbeats every 200ms)", maxAge.Load())
			if maxAge.Load() >= 800 {
				t.Errorf("app1's heartbeats went unheard for %dms during the older process's flood: its rate budget was spent on the flood", maxAge.Load())
			}
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := startTrustRig(t, loopbackNets, "")
			gw := r.gw
			wire := startTripwire(t, "127.0.0.1")
			started := victimStartedAt(t, gw)
			rej0 := gw.rejected(t)
			ev0 := gw.counterBy(t, "caddy_cx_membership_events_total", "event")
			load, watch := underLightLoad(t, gw)
			began := time.Now()

			tc.attack(t, r, wire, started)
			time.Sleep(500 * time.Millisecond) // the load goes on after the attack
			rs := load.Stop()
			watch.check(t)
			doc := gw.checkStatus(t, "after the attack")
			url, state, _, _, _, _ := doc.instance("app1")
			rej1 := gw.rejected(t)
			ev1 := gw.counterBy(t, "caddy_cx_membership_events_total", "event")
			var events []string
			for _, e := range logEntries(gw.logPath) {
				if e.Str("instance") == "app1" && !e.Time().Before(began) {
					ev := e.Str("event")
					if ev == "" {
						ev = e.Str("msg") + "/" + e.Str("reason")
					}
					events = append(events, ev)
				}
			}
			t.Logf("measured: load %s; requests at the attacker's url: %d; app1 after: state %q url %q; app1's log lines: %s; rejections +%s; events +%s",
				rs.Summary(), wire.accepted.Load(), state, url, summarize(events),
				formatCounts(diff(rej1, rej0)), formatCounts(diff(ev1, ev0)))

			if n := wire.accepted.Load(); n > 0 {
				t.Errorf("the attacker's url accepted %d connections from the gateway", n)
			}
			checkVictimServed(t, rs, "app1")
			if state != "active" || url != r.app1.URL {
				t.Errorf("app1 after the attack: state %q, url %q; want active at %s", state, url, r.app1.URL)
			}
			for _, ev := range events {
				if ev == "stale" || ev == "leave" || ev == "restart" {
					t.Errorf("the attack made the gateway log %q for app1 (its log lines: %s)", ev, summarize(events))
					break
				}
			}
			if tc.reason != "" && rej1[tc.reason] <= rej0[tc.reason] {
				t.Errorf("caddy_cx_heartbeats_rejected_total{reason=%q} did not increase", tc.reason)
			}
			if strings.HasPrefix(tc.name, "same started_at") && ev1["conflict"] <= ev0["conflict"] && rej1["conflict"] <= rej0["conflict"] {
				t.Errorf("the url change within one process was not counted as an id conflict (membership_events_total{event=\"conflict\"} or heartbeats_rejected_total{reason=\"conflict\"})")
			}
		})
	}
}

// TestTrustWhoMayBeRouted announces, to a cx_proxy with `allow_ids app*`
// and `priority_range 0 10`, an instance "evil" and an instance "app9",
// both priority -1000 at the url of a second, unannounced backend:
// evil is rejected with reason id and never tried; app9 is admitted with
// its priority clamped to 0 (the status JSON shows priority 0, announced
// -1000), so app1 stays primary and serves. On a build without these
// options the config is refused: the test then measures the attack
// without them and fails.
func TestTrustWhoMayBeRouted(t *testing.T) {
	opts := "allow_ids app*\n\t\tpriority_range 0 10"
	var r *trustRig
	defended := true
	if err := adaptError(t, trustCaddyfile("nats://127.0.0.1:1", "", loopbackNets, opts)); err != nil {
		t.Errorf("cx_proxy does not take allow_ids and priority_range: %v", err)
		defended = false
		r = startTrustRig(t, loopbackNets, "")
	} else {
		r = startTrustRig(t, loopbackNets, opts)
	}
	gw := r.gw
	other := startBackend(t, "other", "", 0) // the attacker's server
	rej0 := gw.rejected(t)
	load, watch := underLightLoad(t, gw)

	stopEvil := keepAnnouncing(t, r.nc, newFake("evil", other.URL, -1000))
	stopApp9 := keepAnnouncing(t, r.nc, newFake("app9", other.URL, -1000))
	evilAdmitted := waitSettled(t, gw, "evil", rej0, "id")
	waitFor(t, 5*time.Second, "app9 to be listed", func() bool {
		_, st, _, _, _, ok := gw.checkStatusQuiet().instance("app9")
		return ok && st != ""
	})
	time.Sleep(time.Second) // the attack goes on under load
	doc := gw.checkStatus(t, "during the attack")
	stopEvil()
	stopApp9()
	rs := load.Stop()
	watch.check(t)
	_, _, prio, announced, _, _ := doc.instance("app9")
	var primary []string
	if len(doc.Services) > 0 {
		primary = doc.Services[0].Primary
	}
	evilTries := gw.triesAt(t, "evil")
	t.Logf("measured: options known: %s; evil (priority -1000) admitted: %s; app9 priority %d (announced %d); primary %v; tries at evil %.0f, app9 %.0f; load %s",
		yes(defended), yes(evilAdmitted), prio, announced, primary, evilTries, gw.triesAt(t, "app9"), rs.Summary())

	if evilAdmitted {
		t.Errorf("an id outside allow_ids (evil) was admitted")
	}
	if prio < 0 {
		t.Errorf("app9 announced priority %d and is routed at priority %d; want it clamped to 0", announced, prio)
	}
	if !slices.Contains(primary, "app1") {
		t.Errorf("app1 is not primary during the attack (primary: %v)", primary)
	}
	if evilTries > 0 {
		t.Errorf("the gateway made %.0f tries at evil", evilTries)
	}
	if defended {
		gw.waitRejected(t, rej0, "id", 2*time.Second)
	}
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d requests failed during the attack:\n%s", len(errs), len(rs), errs.Describe(5))
	}
	if rs.ByInstance()["app1"] == 0 {
		t.Errorf("app1 served no request during the attack: %s", rs.Summary())
	}
}

// diff is a - b for the keys that differ.
func diff(a, b map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range a {
		if d := v - b[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// summarize counts repeated strings: "a x3, b".
func summarize(ss []string) string {
	var order []string
	n := map[string]int{}
	for _, s := range ss {
		if n[s] == 0 {
			order = append(order, s)
		}
		n[s]++
	}
	var b strings.Builder
	for i, s := range order {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s)
		if n[s] > 1 {
			fmt.Fprintf(&b, " x%d", n[s])
		}
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// ------------------------------------------------------- 4: PUT bodies

// storeRecord is one body a testbackend's PUT /store received.
type storeRecord struct {
	Len       int64  `json:"len"`
	SHA256    string `json:"sha256"`
	ExpectLen string `json:"expect_len"`
	Err       string `json:"err"`
}

// bodies reads the bodies b's PUT /store has received so far.
func (b *backend) bodies(t testing.TB) []storeRecord {
	t.Helper()
	var out []storeRecord
	if err := getJSON(b.URL+"/admin/bodies", &out); err != nil {
		t.Fatalf("%s: GET /admin/bodies: %v", b.ID, err)
	}
	return out
}

// truncated lists the records whose body is not the whole one the
// client sent (its length in X-Expect-Len) or whose read failed.
func truncated(rs []storeRecord) []storeRecord {
	var out []storeRecord
	for _, r := range rs {
		if r.Err != "" || fmt.Sprint(r.Len) != r.ExpectLen {
			out = append(out, r)
		}
	}
	return out
}

// TestTrustPutBodiesNeverHalfReplayed PUTs bodies through the gateway to
// a primary (app1) that reads the whole body and then resets the
// connection; app2 is the backup (fail_timeout 1ms, so that every PUT
// goes to app1 first). A request is replayed on app2 only if its whole
// body was buffered (request_buffers, 64 KiB by default):
//
//   - 1 KiB with Content-Length: replayed, app2 gets the whole body, 200;
//   - 100 KiB chunked, 100 KiB and 4 MiB with Content-Length: not
//     replayed (app2 gets no request), the client gets 502.
//
// No backend ever gets a truncated body, and GETs under a steady load
// all succeed.
func TestTrustPutBodiesNeverHalfReplayed(t *testing.T) {
	n := startNATS(t, 0)
	app1 := startBackend(t, "app1", n.URL, 0, "--reset-after-body")
	app2 := startBackend(t, "app2", n.URL, 1)
	gw := startGateway(t, trustCaddyfile(n.URL, "", loopbackNets, "fail_timeout 1ms"))
	waitRoutedTo(t, gw, "app1")
	gw.waitLog(t, 5*time.Second, "app2 joins", membershipEvent("join", "app2", time.Time{}))
	load, watch := underLightLoad(t, gw)

	cases := []struct {
		name     string
		size     int
		chunked  bool
		replayed bool
	}{
		{"1 KiB Content-Length", 1 << 10, false, true},
		{"100 KiB chunked", 100 << 10, true, false},
		{"100 KiB Content-Length", 100 << 10, false, false},
		{"4 MiB Content-Length", 4 << 20, false, false},
	}
	rng := rand.New(rand.NewPCG(7, 8))
	c := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range cases {
		body := make([]byte, tc.size)
		for i := range body {
			body[i] = byte(rng.UintN(256))
		}
		before := len(app2.bodies(t))
		var rd io.Reader = bytes.NewReader(body)
		if tc.chunked {
			rd = io.MultiReader(rd) // no length: sent chunked
		}
		req, err := http.NewRequest(http.MethodPut, gw.URL+"/store", rd)
		if err != nil {
			t.Fatal(err)
		}
		if tc.chunked {
			req.ContentLength = -1
		}
		req.Header.Set("X-Expect-Len", fmt.Sprint(tc.size))
		status, answer := 0, ""
		resp, err := c.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			status, answer = resp.StatusCode, string(b)
		}
		got := app2.bodies(t)[before:]
		line := fmt.Sprintf("%s: client got %d (err %v); app2 got %d requests", tc.name, status, err, len(got))
		for _, r := range got {
			line += fmt.Sprintf(" [bodylen=%d of %s", r.Len, r.ExpectLen)
			if r.Err != "" {
				line += ", read error " + r.Err
			}
			line += "]"
		}
		t.Logf("measured: %s", line)

		if tc.replayed {
			if status != http.StatusOK || !strings.Contains(answer, fmt.Sprintf("bodylen=%d ", tc.size)) {
				t.Errorf("%s: want 200 from app2 with the whole body; got %d %q (err %v)", tc.name, status, truncate(answer, 100), err)
			}
			sum := sha256.Sum256(body)
			if len(got) != 1 || got[0].SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("%s: app2 got %+v, want the one replay with the whole body", tc.name, got)
			}
		} else {
			if len(got) > 0 {
				t.Errorf("%s: replayed on app2 after app1 had consumed the body (app2 got %d requests)", tc.name, len(got))
			}
			if status != http.StatusBadGateway {
				t.Errorf("%s: the client got %d (err %v), want 502", tc.name, status, err)
			}
		}
	}
	rs := load.Stop()
	watch.check(t)
	got1, got2 := app1.bodies(t), app2.bodies(t)
	t.Logf("measured: truncated deliveries: app1 %d of %d, app2 %d of %d; GET load %s",
		len(truncated(got1)), len(got1), len(truncated(got2)), len(got2), rs.Summary())
	if bad := truncated(got1); len(bad) > 0 {
		t.Errorf("app1 got %d truncated bodies: %+v", len(bad), bad)
	}
	if bad := truncated(got2); len(bad) > 0 {
		t.Errorf("app2 got %d truncated bodies: %+v", len(bad), bad)
	}
	if errs := rs.Errors(); len(errs) > 0 {
		t.Errorf("%d of %d GETs failed:\n%s", len(errs), len(rs), errs.Describe(5))
	}
}

// --------------------------------------------------- 5: year 10000

// TestTrustYear10000StartedAt announces started_at
// 9999-12-31T23:59:59.999-23:59 (valid RFC 3339, year 10000 in UTC): it
// is rejected with reason clock, and /ha's JSON and the admin API's
// /cx/instances, polled every 50ms throughout, always answer 200.
func TestTrustYear10000StartedAt(t *testing.T) {
	r := startTrustRig(t, loopbackNets, "")
	gw := r.gw
	wire := startTripwire(t, "127.0.0.1")
	rej0 := gw.rejected(t)
	load, watch := underLightLoad(t, gw)

	var mu sync.Mutex
	polls, bad := 0, map[string]int{}
	var firstBad string
	status := startSampler(50*time.Millisecond, func() {
		for name, url := range gw.statusEndpoints() {
			code, body, err := statusGet(url)
			mu.Lock()
			polls++
			if err != nil || code != http.StatusOK {
				bad[name]++
				if firstBad == "" {
					firstBad = fmt.Sprintf("%s: %d %v %s", name, code, err, truncate(string(body), 160))
				}
			}
			mu.Unlock()
		}
	})
	hb := newFake("y10k", "http://"+wire.Addr, 1000)
	hb.StartedAt = "9999-12-31T23:59:59.999-23:59"
	stop := keepAnnouncing(t, r.nc, hb)
	admitted := waitSettled(t, gw, "y10k", rej0, "clock")
	time.Sleep(1500 * time.Millisecond)
	stop()
	status.stop()
	rs := load.Stop()
	watch.check(t)
	mu.Lock()
	t.Logf("measured: y10k admitted: %s; status polls %d, not 200: %v (first: %s); load %s",
		yes(admitted), polls, bad, firstBad, rs.Summary())
	if len(bad) > 0 {
		t.Errorf("the status endpoints did not answer 200 to %v of %d polls; first: %s", bad, polls, firstBad)
	}
	mu.Unlock()
	gw.waitRejected(t, rej0, "clock", 2*time.Second)
	checkVictimServed(t, rs, "app1")
	gw.checkStatus(t, "after the attack")
}

// ---------------------------------------------- 6: confirm_with redirect

// TestTrustConfirmWithNoRedirect has a member that stops heartbeating
// while its url (inside allow_networks 127.0.0.1/32) answers the
// confirm_with probe with a redirect to 127.0.0.2, outside
// allow_networks, where a server answers 200. The probe does not follow
// it: the server at 127.0.0.2 gets no request and the member turns stale
// within stale_after + the probe's 1s timeout (+1s).
func TestTrustConfirmWithNoRedirect(t *testing.T) {
	var forbidden atomic.Int64
	fln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	fsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		forbidden.Add(1)
		_, _ = io.WriteString(w, "ok")
	})}
	go func() { _ = fsrv.Serve(fln) }()
	t.Cleanup(func() { _ = fsrv.Close() })
	target := "http://" + fln.Addr().String() + "/health"

	rln := listenLocal(t)
	rsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			http.Redirect(w, r, target, http.StatusFound)
			return
		}
		w.Header().Set("X-Instance", "silent")
		_, _ = io.WriteString(w, "instance=silent")
	})}
	go func() { _ = rsrv.Serve(rln) }()
	t.Cleanup(func() { _ = rsrv.Close() })

	n := startNATS(t, 0)
	startBackend(t, "app1", n.URL, 0)
	gw := startGateway(t, trustCaddyfile(n.URL, "", "127.0.0.1/32", "confirm_with /health"))
	waitRoutedTo(t, gw, "app1")
	nc := attacker(t, n.URL)
	load, watch := underLightLoad(t, gw)

	publishFor(t, nc, 200*time.Millisecond, 600*time.Millisecond, func(i int) fakeHB {
		hb := newFake("silent", "http://"+rln.Addr().String(), 1)
		hb.Seq = int64(i + 1)
		return hb
	})
	silentSince := time.Now()
	stale := poll(3*time.Second, func() bool {
		_, st, _, _, _, _ := gw.checkStatusQuiet().instance("silent")
		return st == "stale"
	})
	took := time.Since(silentSince)
	rs := load.Stop()
	watch.check(t)
	_, state, _, _, _, _ := gw.checkStatus(t, "after the attack").instance("silent")
	t.Logf("measured: requests at the forbidden address (127.0.0.2) from the probe: %d; silent member stale: %s (state %q %s after its last heartbeat); load %s",
		forbidden.Load(), yes(stale), state, ms(took), rs.Summary())
	if n := forbidden.Load(); n > 0 {
		t.Errorf("the confirm_with probe followed a redirect to %s outside allow_networks (%d requests)", target, n)
	}
	if !stale {
		t.Errorf("the silent member is %q 3s after its last heartbeat, want stale: a redirect's 2xx kept it routed", state)
	}
	checkVictimServed(t, rs, "app1")
}

// ------------------------------------------------------ 7: https url

// TestTrustHTTPSURLNeverCleartext announces an https:// instance
// (priority -1000) to a cx_proxy without `transport http { tls }`: it is
// rejected with reason scheme and never dialed; the loopback listener at
// its address sees no plaintext request (nor any connection).
func TestTrustHTTPSURLNeverCleartext(t *testing.T) {
	r := startTrustRig(t, loopbackNets, "")
	gw := r.gw
	wire := startTripwire(t, "127.0.0.1")
	rej0 := gw.rejected(t)
	load, watch := underLightLoad(t, gw)

	stop := keepAnnouncing(t, r.nc, newFake("tlsapp", "https://"+wire.Addr, -1000))
	admitted := waitSettled(t, gw, "tlsapp", rej0, "scheme")
	time.Sleep(1500 * time.Millisecond)
	stop()
	rs := load.Stop()
	watch.check(t)
	first, _ := wire.firstLine.Load().(string)
	t.Logf("measured: tlsapp admitted: %s; connections at the https instance %d, in plaintext %d (first bytes %q); load %s",
		yes(admitted), wire.accepted.Load(), wire.plaintext.Load(), truncate(first, 40), rs.Summary())
	if n := wire.plaintext.Load(); n > 0 {
		t.Errorf("the gateway sent %d plaintext requests to an https:// instance (first bytes %q)", n, truncate(first, 40))
	}
	if n := wire.accepted.Load(); n > 0 {
		t.Errorf("the gateway connected %d times to an https:// instance it cannot speak TLS to", n)
	}
	gw.waitRejected(t, rej0, "scheme", 2*time.Second)
	checkVictimServed(t, rs, "app1")
}

// ----------------------------------------------------- 8: secrets

// startNATSArgs starts nats-server on a free port of 127.0.0.1 with extra
// arguments (auth), without waiting for it.
func startNATSArgs(t testing.TB, port int, extra ...string) *natsServer {
	t.Helper()
	n := &natsServer{Port: port, URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	args := append([]string{"-a", "127.0.0.1", "-p", fmt.Sprint(port)}, extra...)
	n.proc = newProc(t, fmt.Sprintf("nats-%d", port), bins.nats, args...)
	return n
}

// TestTrustSecretsStayOut checks where NATS credentials end up:
//
//   - a nats url with user info (nats://user:password@...), the server
//     down when the gateway starts (so that the gateway logs its failing
//     connection) and up a moment later: the password is in no line of
//     the gateway's log, nor of the `caddy-cx announce` sidecar's given
//     the same url;
//   - `token {env.NATS_TOKEN}`: the gateway connects with the token from
//     its environment, and neither GET /config/ nor its log holds it.
func TestTrustSecretsStayOut(t *testing.T) {
	t.Run("user info in the url", func(t *testing.T) {
		const password = "Pw-7d1f0c2e9b"
		port := freePort(t)
		n := startNATSArgs(t, port, "--user", "cxuser", "--pass", password)
		url := fmt.Sprintf("nats://cxuser:%s@127.0.0.1:%d", password, port)
		gw := startGateway(t, trustCaddyfile(url, "", loopbackNets, ""))
		// The gateway logs its failing connection: where a url would be.
		logged := poll(3*time.Second, func() bool {
			_, ok := gw.findLog(func(e logEntry) bool { return strings.Contains(strings.ToLower(e.Str("msg")), "nats") })
			return ok
		})
		t.Logf("the gateway logged about NATS while it was down: %s", yes(logged))
		n.Restart()
		startBackend(t, "app1", url, 0)
		waitRoutedTo(t, gw, "app1")

		side := newProc(t, "announce", bins.caddy, "announce", "--nats", fmt.Sprintf("nats://cxuser:%s@127.0.0.1:%d", password, freePort(t)),
			"--id", "side", "--url", "http://127.0.0.1:9")
		if err := side.start(nil); err != nil {
			t.Fatal(err)
		}
		poll(2*time.Second, func() bool { return side.exited() || strings.Count(side.Log(), "\n") > 2 })
		side.Kill()

		gwLeaks := len(linesWith(gw.Log(), password))
		sideLeaks := len(linesWith(side.Log(), password))
		t.Logf("measured: gateway log lines with the password: %d; sidecar: %d", gwLeaks, sideLeaks)
		if gwLeaks > 0 {
			t.Errorf("the gateway logged the NATS password %d times, e.g.: %s", gwLeaks, linesWith(gw.Log(), password)[0])
		}
		if sideLeaks > 0 {
			t.Errorf("the announce sidecar logged the NATS password %d times, e.g.: %s", sideLeaks, linesWith(side.Log(), password)[0])
		}
	})

	t.Run("token from the environment", func(t *testing.T) {
		const token = "Tok-4a9e61b30c"
		n := startNATSArgs(t, freePort(t), "--auth", token)
		n.Restart()
		t.Setenv("NATS_TOKEN", token)
		tokenURL := fmt.Sprintf("nats://%s@127.0.0.1:%d", token, n.Port)
		startBackend(t, "app1", tokenURL, 0)
		gw := startGateway(t, trustCaddyfile(n.URL, "token {env.NATS_TOKEN}", loopbackNets, ""))
		connected := poll(5*time.Second, func() bool {
			inst, status, err := get(&http.Client{Timeout: time.Second}, gw.URL+"/")
			return err == nil && status == 200 && inst == "app1"
		})
		cfg := adminConfig(t, gw)
		inConfig, inLog := strings.Contains(cfg, token), len(linesWith(gw.Log(), token))
		t.Logf("measured: gateway connected with token {env.NATS_TOKEN}: %s; token in GET /config/: %s; log lines with it: %d",
			yes(connected), yes(inConfig), inLog)
		if !connected {
			t.Errorf("the gateway did not connect to NATS with `token {env.NATS_TOKEN}` (the placeholder is not resolved)")
			// What an operator does instead today: the token in the Caddyfile.
			gw.Kill()
			lit := startGateway(t, trustCaddyfile(n.URL, "token "+token, loopbackNets, ""))
			t.Logf("measured: with the token written in the Caddyfile, token in GET /config/: %s", yes(strings.Contains(adminConfig(t, lit), token)))
		}
		if inConfig {
			t.Errorf("GET /config/ holds the NATS token")
		}
		if inLog > 0 {
			t.Errorf("the gateway logged the NATS token: %s", linesWith(gw.Log(), token)[0])
		}
	})
}

// linesWith returns the lines of a process's log that contain s,
// shortened, leaving out the harness's own `=== <command line>` lines.
func linesWith(log, s string) []string {
	var out []string
	for line := range strings.SplitSeq(log, "\n") {
		if strings.Contains(line, s) && !strings.HasPrefix(line, "=== ") {
			out = append(out, truncate(line, 300))
		}
	}
	return out
}

// ------------------------------------------------------- 9: bounds

// TestTrustBoundsUnderHostileInput checks that what an attacker
// announces cannot grow the gateway's output without bound, each under a
// steady load that app1 serves in full:
//
//   - role labels: 12 pairs of instances, each pair claiming the same 16
//     leader roles (192 conflicting roles): the role label of the metrics
//     takes at most 65 values (64 and `other`);
//   - a 3.7 KB heartbeat of `<` (meta values and version): the status
//     JSON grows by at most twice the heartbeat's size (not ~21 KB), and
//     both status endpoints answer 200;
//   - id conflicts: two processes of one id alternating at 50 messages/s
//     for 3s: at most 10 "instance id conflict" log lines.
func TestTrustBoundsUnderHostileInput(t *testing.T) {
	t.Run("role labels", func(t *testing.T) {
		r := startTrustRig(t, loopbackNets, "")
		gw := r.gw
		wire := startTripwire(t, "127.0.0.1")
		load, watch := underLightLoad(t, gw)
		const pairs, perPair = 12, 16
		var fakes []fakeHB
		for p := range pairs {
			roles := make([]string, perPair)
			for k := range roles {
				roles[k] = fmt.Sprintf("role-%02d-%02d", p, k)
			}
			for _, side := range []string{"a", "b"} {
				hb := newFake(fmt.Sprintf("roles%02d%s", p, side), "http://"+wire.Addr, 1000)
				hb.LeaderRoles = roles
				fakes = append(fakes, hb)
			}
		}
		distinct := 0
		for round := range 5 {
			for _, hb := range fakes {
				hb.Seq = int64(round + 1)
				if err := r.nc.Publish("cx.ha.hb."+hb.ID, hb.encode()); err != nil {
					t.Fatal(err)
				}
			}
			_ = r.nc.Flush()
			time.Sleep(200 * time.Millisecond)
			distinct = max(distinct, roleLabels(t, gw))
		}
		rs := load.Stop()
		watch.check(t)
		t.Logf("measured: %d conflicting roles announced; distinct role label values on /metrics: %d; load %s",
			pairs*perPair, distinct, rs.Summary())
		if distinct > 65 {
			t.Errorf("the metrics carry %d distinct role label values; want at most 65 (64 and other)", distinct)
		}
		checkVictimServed(t, rs, "app1")
		gw.checkStatus(t, "after the attack")
	})

	t.Run("heartbeat of <", func(t *testing.T) {
		r := startTrustRig(t, loopbackNets, "")
		gw := r.gw
		wire := startTripwire(t, "127.0.0.1")
		_, base, _ := statusGet("http://" + gw.AdminAddr + "/cx/instances")
		hb := newFake("lt", "http://"+wire.Addr, 1000)
		hb.Version = strings.Repeat("<", 64)
		hb.Meta = map[string]string{}
		for k := range 13 {
			hb.Meta[fmt.Sprintf("k%02d", k)] = strings.Repeat("<", 256)
		}
		size := len(hb.encode())
		publish(t, r.nc, hb)
		waitFor(t, 5*time.Second, "lt to be listed or rejected", func() bool {
			_, st, _, _, _, ok := gw.checkStatusQuiet().instance("lt")
			return (ok && st != "") || gw.rejectLogged("", "lt")
		})
		grown := map[string]int{}
		for name, url := range gw.statusEndpoints() {
			code, body, err := statusGet(url)
			if err != nil || code != http.StatusOK {
				t.Errorf("%s answered %d (err %v)", name, code, err)
				continue
			}
			grown[name] = len(body) - len(base)
		}
		t.Logf("measured: a heartbeat of %d bytes grew the status JSON by %v bytes", size, grown)
		for name, g := range grown {
			if g > 2*size {
				t.Errorf("%s grew by %d bytes for a heartbeat of %d bytes (%.1fx); want at most 2x", name, g, size, float64(g)/float64(size))
			}
		}
	})

	t.Run("id conflict log", func(t *testing.T) {
		r := startTrustRig(t, loopbackNets, "")
		gw := r.gw
		wire := startTripwire(t, "127.0.0.1")
		load, watch := underLightLoad(t, gw)
		older, newer := time.Now().Add(-time.Minute), time.Now().Add(-30*time.Second)
		sent := publishFor(t, r.nc, 20*time.Millisecond, 3*time.Second, func(i int) fakeHB {
			hb := newFake("dup", "http://"+wire.Addr, 1000)
			hb.StartedAt, hb.Seq = rfc3339(older), int64(i/2+1)
			if i%2 == 1 {
				hb.StartedAt = rfc3339(newer)
			}
			return hb
		})
		rs := load.Stop()
		watch.check(t)
		lines := 0
		for _, e := range logEntries(gw.logPath) {
			if e.Str("msg") == "instance id conflict" {
				lines++
			}
		}
		t.Logf("measured: %d messages of two processes of one id; \"instance id conflict\" log lines: %d; load %s", sent, lines, rs.Summary())
		if lines > 10 {
			t.Errorf("%d id conflict log lines for one conflict in 3s; want at most 10 (rate-limited)", lines)
		}
		checkVictimServed(t, rs, "app1")
		gw.checkStatus(t, "after the attack")
	})
}

// roleLabels counts the distinct values of the labels role and
// leader_role over the gateway's caddy_cx_ metrics.
func roleLabels(t testing.TB, g *gateway) int {
	t.Helper()
	ms, err := g.metrics()
	if err != nil {
		t.Errorf("reading /metrics: %v", err)
		return 0
	}
	seen := map[string]bool{}
	for _, s := range ms {
		if !strings.HasPrefix(s.Name, "caddy_cx_") {
			continue
		}
		for _, label := range []string{"role", "leader_role"} {
			if v, ok := s.Labels[label]; ok {
				seen[label+"="+v] = true
			}
		}
	}
	return len(seen)
}
