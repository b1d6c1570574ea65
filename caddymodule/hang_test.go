package caddymodule

import (
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// hungServer accepts connections and reads requests but never answers,
// like a process stopped with SIGSTOP after its listen queue filled.
func hungServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release })}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { close(release); _ = srv.Close() })
	return "http://" + l.Addr().String()
}

func TestRequestsWaitingOnHungInstanceAreRetriedWhenItTurnsStale(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, basicSite) // stale_after 600ms
	nc := connect(t, natsURL)
	hung := newInstance(t, nc, "app1", hungServer(t), 0)
	app2 := startBackend(t, "app2")
	backup := newInstance(t, nc, "app2", app2.url, 1)
	backup.beat(heartbeat.StateReady)
	t.Cleanup(backup.keepBeating())
	hung.beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 2 }, "2 routes")

	// The instance's last heartbeat is now; it hangs from here on.
	lastHeartbeat := time.Now()
	type result struct {
		id, method string
		code       int
		took       time.Duration
	}
	results := make(chan result, 4)
	var wg sync.WaitGroup
	for _, method := range []string{"GET", "GET", "HEAD", "POST"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			id, code := get(t, method, base)
			results <- result{id, method, code, time.Since(start)}
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		t.Logf("%s: %d from %q after %v (%v after the last heartbeat)", r.method, r.code, r.id, r.took, time.Since(lastHeartbeat))
		if r.method == "POST" {
			// a POST that was sent is never replayed: it fails, it does not hang.
			if r.code != http.StatusBadGateway && r.code != http.StatusGatewayTimeout {
				t.Errorf("POST to the hung instance: status %d, want 502 or 504 once it turned stale", r.code)
			}
		} else if r.code != http.StatusOK || r.id != "app2" {
			t.Errorf("%s: status %d from %q, want 200 from app2", r.method, r.code, r.id)
		}
		if r.took > 600*time.Millisecond+time.Second {
			t.Errorf("%s waited %v, more than stale_after + 1s", r.method, r.took)
		}
	}
}

// TestHungInstanceOnPort80IsDetected: an instance on a default port (Caddy
// may drop it from the request URL) is still recognised by the transport,
// which names the instance from the upstream Caddy chose.
func TestHungInstanceOnPort80IsDetected(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.3:80")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.3:80 here: %v", err)
	}
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release })}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { close(release); _ = srv.Close() })

	natsURL := startNATS(t)
	base := gateway(t, natsURL, basicSite) // stale_after 600ms
	nc := connect(t, natsURL)
	app2 := startBackend(t, "app2")
	backup := newInstance(t, nc, "app2", app2.url, 1)
	backup.beat(heartbeat.StateReady)
	t.Cleanup(backup.keepBeating())
	newInstance(t, nc, "app1", "http://127.0.0.3:80", 0).beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 2 }, "2 routes")

	start := time.Now()
	id, code := get(t, "GET", base)
	if code != http.StatusOK || id != "app2" {
		t.Fatalf("status %d from %q after %v, want 200 from app2 once app1 turned stale", code, id, time.Since(start))
	}
	if took := time.Since(start); took > 600*time.Millisecond+time.Second {
		t.Fatalf("the GET waited %v on the hung instance", took)
	}
}
