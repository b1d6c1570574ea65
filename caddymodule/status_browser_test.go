package caddymodule

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/net/websocket"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// chromiumPath finds headless Chromium: the CHROMIUM environment
// variable, else chromium, chromium-browser or google-chrome on PATH (the
// names Debian, Ubuntu and Google's packages install). Without one the
// test is skipped on a developer's machine, but fails in CI (CI=true),
// where .ci/run installs it: a live-page test that silently skips proves
// nothing.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	names := []string{"chromium", "chromium-browser", "google-chrome"}
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("headless browser test: none of %s found on PATH (or set CHROMIUM); install it with: apt-get update && apt-get install -y chromium",
		strings.Join(names, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: the browser is required)")
	}
	t.Skip(msg)
	return ""
}

// cdp is a minimal Chrome DevTools Protocol client: one page, commands
// only (events are read and dropped).
type cdp struct {
	ws   *websocket.Conn
	next int
}

var devtoolsURL = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

// launchChromium starts headless Chromium on url and attaches to its page.
func launchChromium(t *testing.T, url string) *cdp {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, chromiumPath(t), "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--user-data-dir="+profileDir(t), "--remote-debugging-port=0", "--remote-allow-origins=*",
		"--window-size=1200,640", "--hide-scrollbars", url)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting chromium: %v", err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := devtoolsURL.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	var browserWS string
	select {
	case browserWS = <-found:
	case <-time.After(20 * time.Second):
		t.Fatal("chromium did not print its DevTools address within 20s")
	}
	// the page target, from the HTTP endpoint beside the browser's socket.
	host := strings.TrimPrefix(browserWS, "ws://")
	host = host[:strings.IndexByte(host, '/')]
	var pageWS string
	eventually(t, 10*time.Second, func() bool {
		resp, err := client.Get("http://" + host + "/json/list")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var targets []struct{ Type, URL, WebSocketDebuggerURL string }
		if json.NewDecoder(resp.Body).Decode(&targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, url) {
				pageWS = tg.WebSocketDebuggerURL
				return true
			}
		}
		return false
	}, "the status page's DevTools target")
	ws, err := websocket.Dial(pageWS, "", "http://127.0.0.1/")
	if err != nil {
		t.Fatalf("attaching to the page: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	return &cdp{ws: ws}
}

// call sends one command and returns its result.
func (c *cdp) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	c.next++
	id := c.next
	if err := websocket.JSON.Send(c.ws, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		t.Fatalf("CDP %s: %v", method, err)
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct{ Message string }
		}
		if err := websocket.JSON.Receive(c.ws, &msg); err != nil {
			t.Fatalf("CDP %s: %v", method, err)
		}
		if msg.ID != id {
			continue // an event
		}
		if msg.Error != nil {
			t.Fatalf("CDP %s: %s", method, msg.Error.Message)
		}
		return msg.Result
	}
}

// eval evaluates a JavaScript expression in the page and returns its
// value as JSON text.
func (c *cdp) eval(t *testing.T, expr string) string {
	t.Helper()
	res := c.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
	var out struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct{ Text string } `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &out); err != nil {
		t.Fatal(err)
	}
	if out.ExceptionDetails != nil {
		t.Fatalf("evaluating %s: %s", expr, out.ExceptionDetails.Text)
	}
	return string(out.Result.Value)
}

func (c *cdp) waitFor(t *testing.T, within time.Duration, expr, want, what string) {
	t.Helper()
	var got string
	deadline := time.Now().Add(within)
	for {
		got = c.eval(t, expr)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("page: timed out after %v waiting for %s: %s is %s, want %s", within, what, expr, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cdp) screenshot(t *testing.T, name string) {
	t.Helper()
	res := c.call(t, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true})
	var out struct{ Data string }
	if err := json.Unmarshal(res, &out); err != nil {
		t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(out.Data)
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("CX_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "caddy-cx-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot kept at %s", path)
	if os.Getenv("CX_UPDATE_SCREENSHOTS") != "" {
		if err := os.WriteFile(filepath.Join("..", "docs", "screenshots", name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func rowState(id string) string {
	return fmt.Sprintf(`(document.querySelector('tr[data-id=%q]') || {dataset: {}}).dataset.state || ""`, id)
}

// The page in a real browser follows the deployment live: an instance
// that stops heartbeating turns stale on the page without a reload, the
// primary moves, and the leader-role warning appears and goes.
func TestStatusPageUpdatesLiveInChromium(t *testing.T) {
	chromiumPath(t)
	natsURL := startNATS(t)
	base := gateway(t, natsURL, `http://127.0.0.1:{PORT} {
	cx_status /ha {
		refresh 250ms
	}
	cx_proxy {
		stale_after 1s
	}
}`)
	nc := connect(t, natsURL)
	mk := func(id string, priority int, version string, roles []string, meta map[string]string) *instance {
		b := startBackend(t, id)
		i := newInstance(t, nc, id, b.url, priority)
		i.msg.IntervalMS = 300
		i.msg.StartedAt = time.Now().Add(-time.Duration(priority+1) * 97 * time.Minute).UTC()
		i.msg.Version, i.msg.LeaderRoles, i.msg.Meta = version, roles, meta
		i.beat(heartbeat.StateReady)
		return i
	}
	app1 := mk("app1", 0, "2026.4.1", []string{"email-dispatcher"}, map[string]string{"license": "ok"})
	app2 := mk("app2", 0, "2026.4.1", []string{"email-dispatcher", "scheduler"}, map[string]string{"license": "ok"})
	app3 := mk("app3", 10, "2026.3.7", nil, map[string]string{"license": "free tier"})
	stop1, stop2, stop3 := app1.keepBeating(), app2.keepBeating(), app3.keepBeating()
	defer stop1()
	defer stop2()
	defer stop3()

	peer := fleetGateway(t, natsURL, "gw-peer", nil)
	page := launchChromium(t, base+"/ha")
	page.waitFor(t, 10*time.Second, rowState("app3"), `"active"`, "app3 listed active")
	// the fleet: this gateway marked as the one serving the page, and
	// its peer
	self := serviceOf(t, heartbeat.DefaultPrefix).gatewayID()
	page.waitFor(t, 5*time.Second, fmt.Sprintf(`(document.querySelector('tr[data-gateway=%q]') || {dataset: {}}).dataset.state || ""`, peer.gatewayID()),
		`"active"`, "the peer gateway listed active")
	page.waitFor(t, 5*time.Second, fmt.Sprintf(`(document.querySelector('tr[data-gateway=%q]') || {textContent: ""}).textContent.includes("served this page")`, self),
		"true", "this gateway marked as serving the page")
	if got := page.eval(t, `Array.from(document.querySelectorAll('h3')).some(h => h.textContent === "Gateways")`); got != "true" {
		t.Errorf("no Gateways heading")
	}
	page.waitFor(t, 5*time.Second, rowState("app1"), `"active"`, "app1 listed active")
	// a reload would clear this marker: it proves the updates are live.
	page.eval(t, `window.cxMarker = "same page"`)
	page.waitFor(t, 5*time.Second, `document.querySelector('tr[data-id="app1"]').dataset.primary`, `"true"`, "app1 primary")
	page.waitFor(t, 5*time.Second, `Array.from(document.querySelectorAll('.warning')).some(w => w.textContent.includes('leader role "email-dispatcher"'))`,
		"true", "the warning of a leader role claimed twice")

	// app1 dies (heartbeats stop): stale on the page without a reload.
	killed := time.Now()
	stop1()
	page.waitFor(t, 5*time.Second, rowState("app1"), `"stale"`, "app1 stale")
	t.Logf("heartbeats stopped to stale on the page: %v (stale_after 1s, refresh 250ms)", time.Since(killed).Round(time.Millisecond))
	page.waitFor(t, 2*time.Second, `document.querySelector('.connected-to').textContent`, `"app2"`, "connected to app2")
	if got := page.eval(t, `window.cxMarker`); got != `"same page"` {
		t.Fatalf("the page was reloaded (marker %s): updates must be live", got)
	}
	if got := page.eval(t, `Array.from(document.querySelectorAll('.warning')).some(w => w.textContent.includes('leader role'))`); got != "false" {
		t.Errorf("the leader role warning should end once app1 is stale")
	}
	// app3 drains: shown as draining.
	stop3()
	app3.beat(heartbeat.StateDraining)
	stop3 = app3.keepBeating()
	page.waitFor(t, 3*time.Second, rowState("app3"), `"draining"`, "app3 draining")
	page.screenshot(t, "status.png")

	// a phone-sized viewport reads as cards, no sideways scrolling.
	page.call(t, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true})
	page.waitFor(t, 2*time.Second, `document.documentElement.scrollWidth <= window.innerWidth`, "true", "no horizontal scrolling on a phone")
	page.screenshot(t, "status-phone.png")

	// everything gone: the no-active-instance warning.
	stop2()
	stop3()
	app2.beat(heartbeat.StateLeaving)
	app3.beat(heartbeat.StateLeaving)
	page.waitFor(t, 3*time.Second, rowState("app2"), `"left"`, "app2 left")
	page.waitFor(t, 3*time.Second, `Array.from(document.querySelectorAll('.warning')).some(w => w.textContent.includes('no active instance'))`,
		"true", "the no-active-instance warning")
}

// profileDir is a Chromium profile directory removed after the test. Not
// t.TempDir: Chromium's helper processes may still write into it for a
// moment after the browser exits, which fails t.TempDir's cleanup.
func profileDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cx-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// An operator behind basic_auth drains an instance from the page: the
// Drain button posts the form, the page comes back (303) showing who
// drained it, and the gateway stops routing it.
func TestStatusPageDrainInChromium(t *testing.T) {
	chromiumPath(t)
	ns := jetStreamNATS(t, 0, "")
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	base := gateway(t, ns.ClientURL(), `http://127.0.0.1:{PORT} {
	basic_auth /ha* {
		alice `+string(hash)+`
	}
	cx_status /ha {
		refresh 250ms
	}
	cx_proxy
}`)
	var svc *Service
	for _, s := range runningServices() {
		svc = s
	}
	eventually(t, 5*time.Second, svc.controlFollowing, "the gateway following the control bucket")
	nc := connect(t, ns.ClientURL())
	app1 := newInstance(t, nc, "app1", startBackend(t, "app1").url, 0)
	app2 := newInstance(t, nc, "app2", startBackend(t, "app2").url, 10)
	stop1, stop2 := app1.keepBeating(), app2.keepBeating()
	defer stop1()
	defer stop2()

	page := launchChromium(t, "about:blank")
	page.call(t, "Network.enable", map[string]any{})
	page.call(t, "Network.setExtraHTTPHeaders", map[string]any{"headers": map[string]string{
		"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))}})
	page.call(t, "Page.navigate", map[string]any{"url": base + "/ha"})
	page.waitFor(t, 10*time.Second, rowState("app1"), `"active"`, "app1 listed active")
	drain := `document.querySelector('tr[data-id="app1"] form[data-action="drain"] button')`
	page.waitFor(t, 5*time.Second, drain+` !== null`, "true", "the Drain button for app1")
	page.eval(t, drain+`.click()`)
	page.waitFor(t, 5*time.Second, `(document.querySelector('tr[data-id="app1"]') || {dataset: {}}).dataset.control || ""`, `"drain"`, "app1 shown drained")
	page.waitFor(t, 5*time.Second, `document.querySelector('tr[data-id="app1"] .control-who').textContent.startsWith("by status page user alice via ")`,
		"true", "who drained app1")
	if routes(svc, "app1") || !routes(svc, "app2") {
		t.Fatalf("after the page's drain: app1 routed %v, app2 routed %v", routes(svc, "app1"), routes(svc, "app2"))
	}
	page.screenshot(t, "status-drained.png")
	// Ready from the page brings it back.
	ready := `document.querySelector('tr[data-id="app1"] form[data-action="ready"] button')`
	page.waitFor(t, 5*time.Second, ready+` !== null`, "true", "the Ready button for app1")
	page.eval(t, ready+`.click()`)
	page.waitFor(t, 5*time.Second, `(document.querySelector('tr[data-id="app1"]') || {dataset: {}}).dataset.control`, `""`, "app1's control cleared")
	eventually(t, time.Second, func() bool { return routes(svc, "app1") }, "app1 routed again")
}
