package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
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
// id: it lists it (admitted) or counts a rejection of reason. It reports
// whether the fake was admitted.
func waitSettled(t testing.TB, gw *gateway, id string, rej0 map[string]float64, reason string) (admitted bool) {
	t.Helper()
	waitFor(t, 5*time.Second, "the gateway to admit or reject "+id, func() bool {
		if _, st, _, _, _, ok := gw.checkStatusQuiet().instance(id); ok && st != "" {
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
		load := startLoad(t, gw.URL+"/", lightLoad)
		load.waitServed(t, 5*time.Second, "app1", 10, time.Time{})

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
		load := startLoad(t, gw.URL+"/", lightLoad)
		load.waitServed(t, 5*time.Second, "app1", 10, time.Time{})

		stop := keepAnnouncing(t, nc, newFake("evil", "http://"+natsAddr, -1000))
		admitted := waitSettled(t, gw, "evil", rej0, "loop")
		time.Sleep(time.Second) // the attack goes on under load
		stop()
		rs := load.Stop()
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
			pid := gw.Pid()
			rej0 := gw.rejected(t)
			fd0 := fdCount(pid)
			rss0, _ := rssOf(pid)
			load := startLoad(t, gw.URL+"/", 100*time.Millisecond)
			load.waitServed(t, 5*time.Second, "app1", 3, time.Time{})
			fds := samplePeak(5*time.Millisecond, func() int64 { return int64(fdCount(pid)) })
			rss := samplePeak(5*time.Millisecond, func() int64 { v, _ := rssOf(pid); return int64(v) })

			fake := newFake("loop", "http://"+host+":"+port, -1000)
			publish(t, r.nc, fake)
			time.Sleep(300 * time.Millisecond)
			fake.Seq, fake.State = 2, "leaving"
			publish(t, r.nc, fake)
			time.Sleep(1500 * time.Millisecond) // chains started in the window unwind
			rs := load.Stop()
			fdPeak, rssPeak := fds.stop(), rss.stop()
			tries := gw.triesAt(t, "loop")
			t.Logf("measured: url %s: tries at the fake: %.0f; gateway fds %d before, peak %d; RSS %.1f MiB before, peak %.1f MiB; load %s",
				fake.URL, tries, fd0, fdPeak, mib(rss0), mib(uint64(rssPeak)), rs.Summary())

			if tries > 0 {
				t.Errorf("the gateway proxied %.0f tries to itself through %s", tries, fake.URL)
			}
			if fdPeak > int64(fd0)+100 {
				t.Errorf("the gateway's file descriptors peaked at %d, %d before the attack (limit +100)", fdPeak, fd0)
			}
			if rssPeak > int64(rss0)+50<<20 {
				t.Errorf("the gateway's RSS peaked at %.1f MiB, %.1f MiB before (limit +50 MiB)", mib(uint64(rssPeak)), mib(rss0))
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
//     before app1's: they do not use up app1's rate budget.
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
			publishFor(t, r.nc, 20*time.Millisecond, 3*time.Second, func(i int) fakeHB {
				hb := newFake("app1", "http://"+wire.Addr, 0)
				hb.StartedAt, hb.Seq = rfc3339(at.Add(-time.Hour)), int64(i+1)
				return hb
			})
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
			load := startLoad(t, gw.URL+"/", lightLoad)
			load.waitServed(t, 5*time.Second, "app1", 10, time.Time{})
			began := time.Now()

			tc.attack(t, r, wire, started)
			time.Sleep(500 * time.Millisecond) // the load goes on after the attack
			rs := load.Stop()
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
			if strings.HasPrefix(tc.name, "same started_at") && ev1["conflict"] <= ev0["conflict"] {
				t.Errorf("the url change within one process was not counted as an id conflict")
			}
			if strings.HasPrefix(tc.name, "50 msg/s") && slicesContains(events, "heartbeat rejected/rate") {
				t.Errorf("the gateway blamed app1 for the older process's flood: %s", summarize(events))
			}
		})
	}
}

// TestTrustWhoMayBeRouted announces, to a cx_proxy with `allow_ids app*`
// and `priority_range 0 10`, an instance "evil" and an instance "app9",
// both priority -1000 at a tripwire: evil is rejected with reason id and
// never tried; app9 is admitted with its priority clamped to 0 (the
// status JSON shows priority 0, announced -1000), so app1 stays primary.
// On a build without these options the config is refused: the test then
// measures the attack without them and fails.
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
	wire := startTripwire(t, "127.0.0.1")
	rej0 := gw.rejected(t)
	load := startLoad(t, gw.URL+"/", lightLoad)
	load.waitServed(t, 5*time.Second, "app1", 10, time.Time{})

	stopEvil := keepAnnouncing(t, r.nc, newFake("evil", "http://"+wire.Addr, -1000))
	stopApp9 := keepAnnouncing(t, r.nc, newFake("app9", "http://"+wire.Addr, -1000))
	evilAdmitted := waitSettled(t, gw, "evil", rej0, "id")
	waitFor(t, 5*time.Second, "app9 to be listed", func() bool {
		_, st, _, _, _, ok := gw.checkStatusQuiet().instance("app9")
		return ok && st != ""
	})
	time.Sleep(time.Second)
	doc := gw.checkStatus(t, "during the attack")
	stopEvil()
	stopApp9()
	rs := load.Stop()
	_, _, prio, announced, _, _ := doc.instance("app9")
	var primary []string
	if len(doc.Services) > 0 {
		primary = doc.Services[0].Primary
	}
	t.Logf("measured: options known: %s; evil (priority -1000) admitted: %s; app9 priority %d (announced %d); primary %v; connections at the attacker's url: %d; tries at evil %.0f, app9 %.0f; load %s",
		yes(defended), yes(evilAdmitted), prio, announced, primary, wire.accepted.Load(), gw.triesAt(t, "evil"), gw.triesAt(t, "app9"), rs.Summary())

	if evilAdmitted {
		t.Errorf("an id outside allow_ids (evil) was admitted")
	}
	if prio < 0 {
		t.Errorf("app9 announced priority %d and is routed at priority %d; want it clamped to 0", announced, prio)
	}
	if !slicesContains(primary, "app1") {
		t.Errorf("app1 is not primary during the attack (primary: %v)", primary)
	}
	if tries := gw.triesAt(t, "evil"); tries > 0 {
		t.Errorf("the gateway made %.0f tries at evil", tries)
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

func slicesContains(ss []string, s string) bool {
	for _, v := range ss {
		if v == s {
			return true
		}
	}
	return false
}

var (
	_ = bytes.NewReader
	_ = rand.IntN
)
