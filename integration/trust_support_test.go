package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Helpers of the trust-boundary tests (trust_test.go): a gateway with a
// status page and allow_networks, a hostile publisher on the heartbeat
// subjects, listeners that stand in for addresses no request may reach,
// and readers of the gateway's metrics, status JSON and file descriptors.

// trustRig is a NATS server, the victim instance app1 (priority 0,
// announcing on NATS) and a gateway routing to it, plus a NATS client
// for the attacker.
type trustRig struct {
	n    *natsServer
	app1 *backend
	gw   *gateway
	nc   *nats.Conn
}

// loopbackNets is allow_networks as in Caddyfile.example.
const loopbackNets = "127.0.0.0/8"

// trustCaddyfile is a site with cx_status at /ha and cx_proxy
// (stale_after 1s, allow_networks nets unless empty); proxyExtra goes
// into cx_proxy's block, globalExtra into the cx app's.
func trustCaddyfile(natsURL, globalExtra, nets, proxyExtra string) string {
	nats := "nats " + natsURL
	if natsURL == "" {
		nats = ""
	}
	if nets != "" {
		proxyExtra = "allow_networks " + nets + "\n\t\t" + proxyExtra
	}
	return fmt.Sprintf(`{
	admin %s
	cx {
		%s
		%s
	}
}

http://%s {
	cx_status /ha
	cx_proxy {
		stale_after 1s
		%s
	}
}
`, AdminAddr, nats, globalExtra, SiteAddr, proxyExtra)
}

// startTrustRig starts NATS, app1 and a gateway with trustCaddyfile and
// waits until the gateway routes to app1.
func startTrustRig(t *testing.T, nets, proxyExtra string) *trustRig {
	t.Helper()
	r := &trustRig{n: startNATS(t, 0)}
	r.app1 = startBackend(t, "app1", r.n.URL, 0)
	r.gw = startGateway(t, trustCaddyfile(r.n.URL, "", nets, proxyExtra))
	waitRoutedTo(t, r.gw, "app1")
	r.nc = attacker(t, r.n.URL)
	return r
}

// attacker connects the hostile publisher to NATS.
func attacker(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("attacker"), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("attacker: connecting to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// fakeHB is a heartbeat as an attacker writes it: started_at is a string,
// so that any RFC 3339 text can be sent.
type fakeHB struct {
	Proto       int               `json:"proto"`
	ID          string            `json:"id"`
	URL         string            `json:"url"`
	State       string            `json:"state"`
	StartedAt   string            `json:"started_at"`
	Seq         int64             `json:"seq"`
	IntervalMS  int               `json:"interval_ms"`
	Version     string            `json:"version,omitempty"`
	Priority    int               `json:"priority"`
	LeaderRoles []string          `json:"leader_roles,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
}

// newFake is a valid ready heartbeat of id at url, started now, seq 1.
func newFake(id, url string, priority int) fakeHB {
	return fakeHB{Proto: 1, ID: id, URL: url, State: "ready", StartedAt: rfc3339(time.Now()),
		Seq: 1, IntervalMS: 200, Priority: priority}
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// encode writes hb as JSON without HTML escaping (`<` stays one byte).
func (hb fakeHB) encode() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(hb)
	return bytes.TrimRight(b.Bytes(), "\n")
}

// publish sends hb on its heartbeat subject and flushes.
func publish(t testing.TB, nc *nats.Conn, hb fakeHB) {
	t.Helper()
	if err := nc.Publish("cx.ha.hb."+hb.ID, hb.encode()); err != nil {
		t.Fatalf("attacker: publishing %s: %v", hb.ID, err)
	}
	if err := nc.FlushTimeout(2 * time.Second); err != nil {
		t.Fatalf("attacker: flushing: %v", err)
	}
}

// publishFor publishes next(i) every `every` for d (i counts from 0).
func publishFor(t testing.TB, nc *nats.Conn, every, d time.Duration, next func(i int) fakeHB) int {
	t.Helper()
	end := time.Now().Add(d)
	i := 0
	for tick := time.Now(); time.Now().Before(end); i++ {
		publish(t, nc, next(i))
		tick = tick.Add(every)
		time.Sleep(time.Until(tick))
	}
	return i
}

// ------------------------------------------------------------ metrics

// counterBy reads the gateway's metric name summed by label (nil if
// /metrics cannot be read).
func (g *gateway) counterBy(t testing.TB, name, label string) map[string]float64 {
	t.Helper()
	ms, err := g.metrics()
	if err != nil {
		t.Errorf("reading /metrics: %v", err)
		return nil
	}
	return byLabel(ms, name, label)
}

// rejected is caddy_cx_heartbeats_rejected_total by reason.
func (g *gateway) rejected(t testing.TB) map[string]float64 {
	t.Helper()
	return g.counterBy(t, "caddy_cx_heartbeats_rejected_total", "reason")
}

// triesAt is how many tries of requests the gateway made at instance id
// (caddy_cx_upstream_requests_total, every outcome).
func (g *gateway) triesAt(t testing.TB, id string) float64 {
	t.Helper()
	return g.counterBy(t, "caddy_cx_upstream_requests_total", "instance")[id]
}

// waitRejected waits until the rejections of reason exceed before[reason];
// it reports whether they did (the test fails if not).
func (g *gateway) waitRejected(t testing.TB, before map[string]float64, reason string, timeout time.Duration) bool {
	t.Helper()
	var now map[string]float64
	ok := poll(timeout, func() bool {
		ms, err := g.metrics()
		if err != nil {
			return false
		}
		now = byLabel(ms, "caddy_cx_heartbeats_rejected_total", "reason")
		return now[reason] > before[reason]
	})
	if !ok {
		t.Errorf("caddy_cx_heartbeats_rejected_total{reason=%q} did not increase within %v (rejections now: %s)",
			reason, timeout, formatCounts(now))
	}
	return ok
}

// rejectLogged reports whether the gateway logged "heartbeat rejected"
// with reason for instance id (any id if "").
func (g *gateway) rejectLogged(reason, id string) bool {
	_, ok := g.findLog(func(e logEntry) bool {
		return e.Str("msg") == "heartbeat rejected" && e.Str("reason") == reason && (id == "" || e.Str("instance") == id)
	})
	return ok
}

// ------------------------------------------------------- status JSON

// statusDoc is the JSON of /cx/instances and of cx_status, as generic
// values (started_at as its text).
type statusDoc struct {
	Services []struct {
		SubjectPrefix string   `json:"subject_prefix"`
		NATSConnected bool     `json:"nats_connected"`
		Primary       []string `json:"primary"`
		Instances     []struct {
			ID                string  `json:"id"`
			URL               string  `json:"url"`
			State             string  `json:"state"`
			StartedAt         string  `json:"started_at"`
			Priority          int     `json:"priority"`
			AnnouncedPriority int     `json:"announced_priority"`
			Primary           bool    `json:"primary"`
			HeartbeatAge      float64 `json:"heartbeat_age_seconds"`
		} `json:"instances"`
	} `json:"services"`
}

// statusGet fetches url (Accept: application/json) and returns the
// status, the body and any transport error.
func statusGet(url string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// statusEndpoints are the status page's JSON and the admin API's.
func (g *gateway) statusEndpoints() map[string]string {
	return map[string]string{"/ha": g.URL + "/ha", "admin /cx/instances": "http://" + g.AdminAddr + "/cx/instances"}
}

// checkStatus asserts that both status endpoints answer 200 with JSON;
// it returns the admin API's document.
func (g *gateway) checkStatus(t testing.TB, when string) statusDoc {
	t.Helper()
	var doc statusDoc
	for name, url := range g.statusEndpoints() {
		code, body, err := statusGet(url)
		if err != nil || code != http.StatusOK {
			t.Errorf("%s: %s answered %d (error %v): %s", when, name, code, err, truncate(string(body), 200))
			continue
		}
		if name != "/ha" {
			if err := json.Unmarshal(body, &doc); err != nil {
				t.Errorf("%s: %s: %v", when, name, err)
			}
		}
	}
	return doc
}

// instance finds id in doc.
func (d statusDoc) instance(id string) (url, state string, priority, announced int, startedAt string, ok bool) {
	for _, s := range d.Services {
		for _, in := range s.Instances {
			if in.ID == id {
				return in.URL, in.State, in.Priority, in.AnnouncedPriority, in.StartedAt, true
			}
		}
	}
	return "", "", 0, 0, "", false
}

// ------------------------------------------------- forbidden targets

// tripwire is a loopback TCP listener standing in for an address no
// request may reach: it counts the connections it accepts and whether
// each began with a TLS handshake record (0x16) or with anything else
// (plaintext), then closes them.
type tripwire struct {
	ln        net.Listener
	Addr      string
	accepted  atomic.Int64
	plaintext atomic.Int64
	firstLine atomic.Value // string: the first plaintext bytes seen
}

func startTripwire(t testing.TB, host string) *tripwire {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("tripwire on %s: %v", host, err)
	}
	w := &tripwire{ln: ln, Addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			w.accepted.Add(1)
			wg.Go(func() {
				defer c.Close()
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				if n > 0 && buf[0] != 0x16 {
					w.plaintext.Add(1)
					w.firstLine.CompareAndSwap(nil, string(buf[:n]))
				}
			})
		}
	})
	return w
}

// ----------------------------------------------------- process figures

// fdCount is how many file descriptors process pid has open.
func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// peakSampler samples f every `every` and keeps the largest value.
type peakSampler struct {
	s    *sampler
	peak atomic.Int64
}

func samplePeak(every time.Duration, f func() int64) *peakSampler {
	p := &peakSampler{}
	p.peak.Store(-1)
	p.s = startSampler(every, func() {
		if v := f(); v > p.peak.Load() {
			p.peak.Store(v)
		}
	})
	return p
}

func (p *peakSampler) stop() int64 { p.s.stop(); return p.peak.Load() }

// ------------------------------------------------------------ configs

// adaptError runs `caddy-cx adapt` on caddyfile (placeholders replaced
// by dummy addresses) and returns its complaint, if any: a defence's
// option that this build does not know yet shows up here.
func adaptError(t testing.TB, caddyfile string) error {
	t.Helper()
	file := filepath.Join(t.TempDir(), "Caddyfile")
	text := strings.NewReplacer(AdminAddr, "127.0.0.1:1", SiteAddr, "127.0.0.1:2").Replace(caddyfile)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.caddy, "adapt", "--config", file, "--adapter", "caddyfile").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, lastLine(string(out)))
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// ---------------------------------------------------------------- load

// lightLoad is the steady load the victim must serve throughout an
// attack: one GET every 20ms (50/s).
const lightLoad = 20 * time.Millisecond

// checkVictimServed asserts that every request of rs succeeded and was
// served by the victim id; it returns a one-line summary.
func checkVictimServed(t testing.TB, rs results, id string) string {
	t.Helper()
	errs := rs.Errors()
	by := rs.ByInstance()
	if len(rs) == 0 {
		t.Errorf("the load sent no request")
	}
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed during the attack; first ones:\n%s", len(errs), len(rs), errs.Describe(5))
	}
	if by[id] != len(rs) {
		t.Errorf("the victim %s served %d of %d requests (%v); want all", id, by[id], len(rs), by)
	}
	return fmt.Sprintf("%d requests, %d errors, served by %v", len(rs), len(errs), by)
}

// gatewayWatch samples the gateway's file descriptors and RSS every 5ms
// and its goroutines every 50ms, from a baseline taken at its start.
type gatewayWatch struct {
	gw                   *gateway
	fd0, goroutines0     int
	rss0                 uint64
	fds, rss, goroutines *peakSampler
}

// Bounds of what an attack may add to the gateway's resources.
const (
	watchFDs        = 100
	watchRSS        = 50 << 20
	watchGoroutines = 200
)

// underLightLoad starts the light steady load through gw, waits until app1
// serves it, and starts watching the gateway's fds, RSS and goroutines:
// the scene every attack is played in.
func underLightLoad(t testing.TB, gw *gateway) (*loadGen, *gatewayWatch) {
	t.Helper()
	load := startLoad(t, gw.URL+"/", lightLoad)
	load.waitServed(t, 5*time.Second, "app1", 10, time.Time{})
	return load, watchGateway(t, gw)
}

func watchGateway(t testing.TB, gw *gateway) *gatewayWatch {
	t.Helper()
	pid := gw.Pid()
	w := &gatewayWatch{gw: gw, fd0: fdCount(pid), goroutines0: goroutineCount(gw)}
	w.rss0, _ = rssOf(pid)
	w.fds = samplePeak(5*time.Millisecond, func() int64 { return int64(fdCount(pid)) })
	w.rss = samplePeak(5*time.Millisecond, func() int64 { v, _ := rssOf(pid); return int64(v) })
	w.goroutines = samplePeak(50*time.Millisecond, func() int64 { return int64(goroutineCount(gw)) })
	t.Cleanup(func() { w.fds.stop(); w.rss.stop(); w.goroutines.stop() })
	return w
}

// check stops sampling, logs the peaks and asserts the bounds.
func (w *gatewayWatch) check(t testing.TB) {
	t.Helper()
	fds, rss, gs := w.fds.stop(), w.rss.stop(), w.goroutines.stop()
	t.Logf("measured: gateway fds %d before, peak %d; RSS %.1f MiB before, peak %.1f MiB; goroutines %d before, peak %d",
		w.fd0, fds, mib(w.rss0), mib(uint64(rss)), w.goroutines0, gs)
	if fds > int64(w.fd0+watchFDs) {
		t.Errorf("the gateway's file descriptors peaked at %d, %d before the attack (limit +%d)", fds, w.fd0, watchFDs)
	}
	if rss > int64(w.rss0+watchRSS) {
		t.Errorf("the gateway's RSS peaked at %.1f MiB, %.1f MiB before the attack (limit +%.0f MiB)", mib(uint64(rss)), mib(w.rss0), mib(watchRSS))
	}
	if gs > int64(w.goroutines0+watchGoroutines) {
		t.Errorf("the gateway's goroutines peaked at %d, %d before the attack (limit +%d)", gs, w.goroutines0, watchGoroutines)
	}
}

// goroutineCount reads the gateway's goroutine count from the admin
// API's goroutine profile (-1 if it cannot).
func goroutineCount(g *gateway) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + g.AdminAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var n int
	if _, err := fmt.Fscanf(resp.Body, "goroutine profile: total %d", &n); err != nil {
		return -1
	}
	return n
}

// heartbeatAge is the age of id's last accepted heartbeat on the admin
// API's status JSON (-1 if not listed).
func (d statusDoc) heartbeatAge(id string) float64 {
	for _, s := range d.Services {
		for _, in := range s.Instances {
			if in.ID == id {
				return in.HeartbeatAge
			}
		}
	}
	return -1
}
