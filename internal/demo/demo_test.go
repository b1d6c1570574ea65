package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"golang.org/x/net/websocket"

	_ "github.com/caddy-cx/caddy-cx/caddymodule"
	"github.com/caddy-cx/caddy-cx/membership"
)

// childMarker in the environment makes this test binary the caddy-cx CLI:
// the demo runs it as its child gateways (gatewayExecutable is
// os.Executable, the test binary here).
const childMarker = "CX_DEMO_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childMarker) == "1" {
		caddycmd.Main() // exits
	}
	childEnv = []string{childMarker + "=1"}
	os.Exit(m.Run())
}

// syncBuffer is the demo's output, with a signal when a line appears.
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	waits map[string]chan struct{}
}

func newSyncBuffer(waitFor ...string) *syncBuffer {
	b := &syncBuffer{waits: map[string]chan struct{}{}}
	for _, s := range waitFor {
		b.waits[s] = make(chan struct{})
	}
	return b
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	for s, ch := range b.waits {
		if strings.Contains(b.buf.String(), s) {
			close(ch)
			delete(b.waits, s)
		}
	}
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) await(t *testing.T, s string) {
	t.Helper()
	b.mu.Lock()
	ch, ok := b.waits[s]
	b.mu.Unlock()
	if !ok {
		return
	}
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("demo never printed %q; output:\n%s", s, b.String())
	}
}

// TestDrill runs the whole drill in-process: no step may cost clients an
// error (the README's table claims 0 for each step it lists), traffic must
// have moved in every step, and the deploy must switch clients to the new
// version exactly once.
func TestDrill(t *testing.T) {
	const interval = 200 * time.Millisecond
	readme := readmeDrillTable(t)
	out := newSyncBuffer()
	start := time.Now()
	report, err := Run(context.Background(), Options{Drill: true, Duration: time.Second, Interval: interval, Out: out})
	t.Logf("drill took %v; output:\n%s", time.Since(start), out)
	if report == nil || err != nil && !errors.Is(err, ErrDrillErrors) && !errors.Is(err, ErrVersionSwitches) {
		t.Fatalf("the drill did not complete: %v", err)
	}
	if err != nil {
		// The checks below say where.
		t.Errorf("Run: %v", err)
	}
	for _, name := range []string{"baseline", "kill", "hang", "roll", "deploy"} {
		s := report.Step(name)
		if s == nil {
			t.Fatalf("no %s step in the report", name)
		}
		if s.Requests == 0 {
			t.Errorf("%s: no requests", name)
		}
		if name != "baseline" && s.Failover < 0 {
			t.Errorf("%s: traffic never moved to another instance", name)
		}
	}
	for _, s := range report.Steps {
		if s.Errors != 0 {
			t.Errorf("%s: %d client-visible errors of %d requests: %v", s.Name, s.Errors, s.Requests, s.Samples)
		}
	}
	for name, errs := range readme {
		if s := report.Step(name); s == nil {
			t.Errorf("the README's drill table has a %q row; the drill has no such step", name)
		} else if s.Errors > errs {
			t.Errorf("%s: %d client-visible errors; the README's table claims %d", name, s.Errors, errs)
		}
	}
	for _, s := range report.Steps {
		want, versions := 0, []string{StartVersion}
		if s.Name == "deploy" {
			want, versions = 1, []string{StartVersion, DeployVersion}
		}
		if s.Switches != want || !slices.Equal(s.Versions, versions) {
			t.Errorf("%s: %d version switches, served %v; want %d, %v", s.Name, s.Switches, s.Versions, want, versions)
		}
	}
	if err := report.versionsErr(); err != nil {
		t.Error(err)
	}
	if kill := report.Step("kill"); kill.Failover > time.Second {
		t.Errorf("kill: failover took %v; a dead instance's connections fail at once and are retried", kill.Failover)
	}
	// A hung instance's last heartbeat came at most one interval before
	// the hang: it is stale within stale_after of the hang, noticed within
	// a sweep, and the requests waiting on it are retried then. 500ms for
	// -race and scheduling on a loaded machine.
	stale := staleAfter(interval)
	hang := report.Step("hang")
	if hang.Failover < stale/2 {
		t.Errorf("hang: failover after %v, before the instance could be stale (stale_after %v)", hang.Failover, stale)
	}
	if limit := stale + membership.SweepInterval + 500*time.Millisecond; hang.Failover > limit || hang.Slowest > limit {
		t.Errorf("hang: failover after %v, slowest request %v; want both within stale_after (%v) + a sweep + 500ms (%v)",
			hang.Failover, hang.Slowest, stale, limit)
	}
	for _, want := range []string{"join      app1", "stale     app1", "restart   app1", "leave     app3", "Failover drill:",
		"version " + StartVersion, "version " + DeployVersion, `version_switch  routing version "` + DeployVersion + `"`,
		"Clients went from " + StartVersion + " to " + DeployVersion + " once", "No client saw an error."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// readmeDrillTable reads the README's table of measured drill figures:
// for each row, the step (the first word: kill, hang, roll, deploy) and
// its client-visible errors.
func readmeDrillTable(t *testing.T) map[string]int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(data), "| step | requests | client-visible errors |")
	if !ok {
		t.Fatal("README.md has no drill table (a header `| step | requests | client-visible errors | ...`)")
	}
	rows := map[string]int{}
	for i, line := range strings.Split(table, "\n")[1:] {
		if i == 0 {
			continue // the |---| line
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if !strings.HasPrefix(line, "|") || len(cells) < 3 {
			break
		}
		step := strings.Fields(cells[0])[0]
		n, err := strconv.Atoi(strings.TrimSpace(cells[2]))
		if err != nil {
			t.Fatalf("README drill table, row %q: errors column %q is not a number", step, cells[2])
		}
		rows[step] = n
	}
	if len(rows) == 0 {
		t.Fatal("README.md's drill table has no rows")
	}
	return rows
}

// TestDemoServes runs the demo until cancelled: the page names the
// instance, the WebSocket echo goes through the gateway, and cancelling
// stops everything with every instance leaving.
func TestDemoServes(t *testing.T) {
	out := newSyncBuffer("Ctrl-C stops everything.", "leave     app3")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	o := Options{Out: out, Port: 0}
	go func() {
		_, err := Run(ctx, o)
		done <- err
	}()
	out.await(t, "Ctrl-C stops everything.")
	site := siteOf(t, out.String())

	resp, err := http.Get(site + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Served by app1") || resp.Header.Get("X-Version") != StartVersion {
		t.Errorf("GET /: %s\n%s", resp.Status, body)
	}

	ws, err := websocket.Dial(strings.Replace(site, "http", "ws", 1)+"/ws", "", site)
	if err != nil {
		t.Fatal(err)
	}
	if err := websocket.Message.Send(ws, "ping"); err != nil {
		t.Fatal(err)
	}
	var echo string
	if err := websocket.Message.Receive(ws, &echo); err != nil || echo != "ping" {
		t.Errorf("WebSocket echo: %q, %v", echo, err)
	}
	ws.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	out.await(t, "leave     app3")
	for _, want := range []string{"metrics         http://127.0.0.1:", "join      app2", "leave     app1", "version " + StartVersion} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestVersionSwitches: the load counts a switch when a request sent after
// the served version reached a client gets another version; an answer to
// a request sent before that is a late pick of the old version, not a
// switch back.
func TestVersionSwitches(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	newLoad := func() *load { return &load{cancel: func() {}, client: &http.Client{}} } // no clients: results are fed in
	l := newLoad()
	l.begin("baseline", "", "")
	res := func(start, end int, version string) {
		l.record(result{start: at(start), end: at(end), instance: "app1", version: version})
	}
	res(0, 1, "1")
	res(1, 2, "1")
	l.begin("deploy", "", "")
	res(2, 4, "2") // the switch
	res(3, 5, "1") // sent before "2" was seen: picked before the switch
	res(2, 6, "1") // likewise, and slow
	res(5, 7, "2")
	res(6, 8, "2")
	l.begin("after", "", "")
	res(8, 9, "2")
	steps := l.stop()
	for i, want := range []struct {
		switches int
		versions []string
	}{{0, []string{"1"}}, {1, []string{"1", "2"}}, {0, []string{"2"}}} {
		if s := steps[i]; s.Switches != want.switches || !slices.Equal(s.Versions, want.versions) {
			t.Errorf("%s: %d switches, versions %v; want %d, %v", s.Name, s.Switches, s.Versions, want.switches, want.versions)
		}
	}

	// Alternation is counted in full: each answer comes after the previous
	// one was seen.
	l = newLoad()
	l.begin("deploy", "", "")
	for i := range 10 {
		res(2*i, 2*i+1, strconv.Itoa(1+i%2))
	}
	// A slow answer counts too if its request was sent after the version
	// it replaces had been seen ("2", at 19).
	res(20, 30, "1")
	s := l.stop()[0]
	if s.Switches != 10 || len(s.Versions) != maxVersions || s.Versions[maxVersions-1] != "1" {
		t.Errorf("alternating: %d switches, versions %v; want 10, %d of them ending in 1", s.Switches, s.Versions, maxVersions)
	}
	r := Report{Steps: []Step{s}}
	if err := r.versionsErr(); !errors.Is(err, ErrVersionSwitches) || !strings.Contains(err.Error(), "1 → 2 → … → 1") {
		t.Errorf("versionsErr: %v", err)
	}
}

// TestPortTaken: a taken port is a clear error naming the flag.
func TestPortTaken(t *testing.T) {
	port, err := claimPort(0, "--port")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Run(context.Background(), Options{Port: port})
	if err == nil || !strings.Contains(err.Error(), "is taken") || !strings.Contains(err.Error(), "--port") {
		t.Errorf("Run on a taken port: %v", err)
	}
}

func siteOf(t *testing.T, out string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "site" {
			return strings.TrimSuffix(f[1], "/")
		}
	}
	t.Fatalf("no site URL in the output:\n%s", out)
	return ""
}

// TestDemoGateways runs `demo --gateways 3`: gw1 in process, gw2 and gw3
// as child processes on gw1's embedded NATS. Each one's GET /cx/gateways
// lists the three as active, naming itself; each site serves app1; and
// cancelling the demo stops the children (their ports close).
func TestDemoGateways(t *testing.T) {
	out := newSyncBuffer("Ctrl-C stops everything.")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, Options{Out: out, Gateways: 3})
		done <- err
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return 30s after cancel")
		}
	}
	t.Cleanup(stop)
	out.await(t, "Ctrl-C stops everything.")
	gws := gatewaysOf(t, out.String())
	if len(gws) != 3 {
		t.Fatalf("the demo lists %d gateways, want 3:\n%s", len(gws), out)
	}
	ids := []string{"gw1", "gw2", "gw3"}
	for i, g := range gws {
		if g.id != ids[i] {
			t.Fatalf("gateway %d is %q, want %s:\n%s", i+1, g.id, ids[i], out)
		}
		var last string
		if !pollUntil(15*time.Second, func() bool {
			var doc struct {
				Services []struct {
					Gateways []struct {
						ID    string `json:"id"`
						Self  bool   `json:"self"`
						State string `json:"state"`
					} `json:"gateways"`
				} `json:"services"`
				GatewayID string `json:"gateway_id"`
			}
			status, err := getJSON(g.admin, &doc)
			last = fmt.Sprintf("status %d, %v, %+v", status, err, doc)
			if err != nil || len(doc.Services) != 1 || doc.GatewayID != g.id {
				return false
			}
			var active []string
			for _, other := range doc.Services[0].Gateways {
				if other.State == "active" && other.Self == (other.ID == g.id) {
					active = append(active, other.ID)
				}
			}
			slices.Sort(active)
			return slices.Equal(active, ids)
		}) {
			t.Errorf("%s: GET %s does not list gw1, gw2 and gw3 active within 15s; last: %s", g.id, g.admin, last)
		}
		resp, err := http.Get(g.site + "/")
		if err != nil {
			t.Fatalf("%s: %v", g.id, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "Served by app1") {
			t.Errorf("%s: GET %s/: %s\n%s", g.id, g.site, resp.Status, body)
		}
	}
	stop()
	for _, g := range gws[1:] {
		addr := strings.TrimPrefix(strings.TrimSuffix(g.admin, "/cx/gateways"), "http://")
		if !pollUntil(10*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err != nil
		}) {
			t.Errorf("%s still accepts connections on its admin API %s after the demo ended", g.id, addr)
		}
	}
}

// demoGateway is one line of the demo's gateway list.
type demoGateway struct{ id, site, admin string }

// gatewaysOf parses the demo's gateway list: `gwN site URL/ status page
// URL/ha gateways URL/cx/gateways`.
func gatewaysOf(t *testing.T, out string) []demoGateway {
	t.Helper()
	var gws []demoGateway
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && strings.HasPrefix(f[0], "gw") && f[1] == "site" && f[6] == "gateways" {
			gws = append(gws, demoGateway{id: f[0], site: strings.TrimSuffix(f[2], "/"), admin: f[7]})
		}
	}
	return gws
}

func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// getJSON GETs url and decodes a 200 answer into v.
func getJSON(url string, v any) (int, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(v)
}
