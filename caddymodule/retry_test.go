package caddymodule

import (
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// primaryAndBackup starts app1 (priority 0) and app2 (priority 1) behind a
// gateway and waits until both are routed.
func primaryAndBackup(t *testing.T, site string) (base string, app1, app2 *backend) {
	t.Helper()
	natsURL := startNATS(t)
	base = gateway(t, natsURL, site)
	nc := connect(t, natsURL)
	app1, app2 = startBackend(t, "app1"), startBackend(t, "app2")
	i1, i2 := newInstance(t, nc, "app1", app1.url, 0), newInstance(t, nc, "app2", app2.url, 1)
	i1.beat(heartbeat.StateReady)
	i2.beat(heartbeat.StateReady)
	t.Cleanup(i1.keepBeating())
	t.Cleanup(i2.keepBeating())
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 2 }, "2 routes")
	return base, app1, app2
}

func TestPrimary503GetFailsOverPostIsNotReplayed(t *testing.T) {
	base, app1, app2 := primaryAndBackup(t, basicSite)
	if id, _ := get(t, "GET", base); id != "app1" {
		t.Fatalf("primary should serve first, got %q", id)
	}
	app1.failing.Store(true)

	// The POST goes first: it must reach the primary and get its 503 back.
	if id, code := get(t, "POST", base); code != http.StatusServiceUnavailable || id != "app1" {
		t.Fatalf("POST: status %d from %q, want the primary's 503", code, id)
	}
	if n := app2.count("POST"); n != 0 {
		t.Fatalf("POST was replayed on the backup %d times", n)
	}
	for range 20 {
		if id, code := get(t, "GET", base); code != http.StatusOK || id != "app2" {
			t.Fatalf("GET: status %d from %q, want 200 from the backup", code, id)
		}
	}
	// The GET's 503 marked the primary failing (passive health): further
	// requests go straight to the backup instead of paying a failed try.
	if n := app1.count("GET"); n != 2 {
		t.Fatalf("primary got %d GETs while failing, want 2 (the first retried one)", n)
	}
}

func TestRetryToAnotherInstanceDoesNotWait(t *testing.T) {
	base, app1, _ := primaryAndBackup(t, basicSite)
	app1.failing.Store(true)
	start := time.Now()
	id, code := get(t, "GET", base)
	took := time.Since(start)
	if code != http.StatusOK || id != "app2" {
		t.Fatalf("status %d from %q", code, id)
	}
	t.Logf("GET failed over from a 503 in %v", took)
	// Stock Caddy waits lb_try_interval (250ms) before every retry.
	if took >= 250*time.Millisecond {
		t.Fatalf("the retry took %v: it waited before trying the other instance", took)
	}
}

func TestPostToRefusingPortIsRetriedElsewhere(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, steadySite)
	nc := connect(t, natsURL)
	dead := closedPortURL(t)
	app2 := startBackend(t, "app2")
	newInstance(t, nc, "app1", dead, 0).beat(heartbeat.StateReady)
	newInstance(t, nc, "app2", app2.url, 1).beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 2 }, "2 routes")
	for _, method := range []string{"POST", "PATCH", "GET"} {
		if id, code := get(t, method, base); code != http.StatusOK || id != "app2" {
			t.Fatalf("%s: status %d from %q; a refused connection must be retried elsewhere", method, code, id)
		}
	}
}

// closedPortURL returns the url of a loopback port that refuses connections.
func closedPortURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func TestWebSocketEchoThroughGateway(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, steadySite)
	nc := connect(t, natsURL)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echo := &http.Server{Handler: websocket.Handler(func(ws *websocket.Conn) {
		var msg string
		for websocket.Message.Receive(ws, &msg) == nil {
			_ = websocket.Message.Send(ws, "echo:"+msg)
		}
	})}
	go func() { _ = echo.Serve(l) }()
	t.Cleanup(func() { _ = echo.Close() })
	newInstance(t, nc, "ws1", "http://"+l.Addr().String(), 0).beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 1 }, "1 route")

	ws, err := websocket.Dial("ws"+base[len("http"):]+"/ws", "", base)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for _, msg := range []string{"one", "two"} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != "echo:"+msg {
			t.Fatalf("got %q, %v", got, err)
		}
	}
}

func TestIdempotentRequestWithBodyIsReplayedWhole(t *testing.T) {
	// fail_timeout 1ms: the primary is tried (and answers 503) every time.
	base, app1, app2 := primaryAndBackup(t, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tfail_timeout 1ms\n\t}\n}")
	app1.failing.Store(true)
	for range 3 {
		time.Sleep(2 * time.Millisecond) // let the 1ms fail_timeout pass: this is the behaviour under test
		if id, code := get(t, "PUT", base); code != http.StatusOK || id != "app2" {
			t.Fatalf("PUT: status %d from %q, want 200 from the backup with the whole body", code, id)
		}
	}
	if app1.count("PUT") != 3 || app2.count("PUT") != 3 {
		t.Fatalf("each PUT should be tried on the primary, then replayed on the backup: primary %d, backup %d",
			app1.count("PUT"), app2.count("PUT"))
	}
}
