package caddymodule

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// seenBody is one request body as a backend read it.
type seenBody struct {
	method   string
	declared int64 // Content-Length, -1 if chunked
	n        int
	sum      [sha256.Size]byte
	err      error // from reading the body: a cut stream shows here
}

// bodyBackend is a real HTTP server on loopback that records every request
// body it reads. Its mode decides what it does then: "ok" answers 200 and
// names itself, "reset" resets the connection after reading the whole body,
// "hang" reads the whole body and never answers, "503" answers 503 at once
// without reading the body.
type bodyBackend struct {
	id   string
	mode string
	url  string
	mu   sync.Mutex
	seen []seenBody
}

func startBodyBackend(t *testing.T, id, mode string) *bodyBackend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &bodyBackend{id: id, mode: mode, url: "http://" + l.Addr().String()}
	srv := &http.Server{Handler: b}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

func (b *bodyBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if b.mode == "503" {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	s := seenBody{method: r.Method, declared: r.ContentLength, n: int(n), err: err}
	h.Sum(s.sum[:0])
	b.mu.Lock()
	b.seen = append(b.seen, s)
	b.mu.Unlock()
	if b.mode == "hang" {
		<-r.Context().Done() // the gateway gave up on it
		return
	}
	if b.mode == "reset" {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		_ = conn.(*net.TCPConn).SetLinger(0)
		_ = conn.Close()
		return
	}
	w.Header().Set("X-Instance", b.id)
	fmt.Fprint(w, b.id)
}

func (b *bodyBackend) bodies() []seenBody {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]seenBody(nil), b.seen...)
}

// bodyFailover starts a gateway with the site's cx_proxy, primary (priority
// 0, at primaryURL) and a recording backup (priority 1), and waits until
// both are routed.
func bodyFailover(t *testing.T, site, primaryURL string) (base string, backup *bodyBackend) {
	t.Helper()
	natsURL := startNATS(t)
	base = gateway(t, natsURL, site)
	nc := connect(t, natsURL)
	backup = startBodyBackend(t, "app2", "ok")
	newInstance(t, nc, "app1", primaryURL, 0).beat(heartbeat.StateReady)
	newInstance(t, nc, "app2", backup.url, 1).beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return len(serviceOf(t, heartbeat.DefaultPrefix).reg.Snapshot().Routes) == 2 }, "2 routes")
	return base, backup
}

// sendBody sends a request with body, chunked or with Content-Length, and
// returns the status and the instance that answered.
func sendBody(t *testing.T, method, url string, body []byte, chunked bool) (int, string) {
	t.Helper()
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // hides the length: sent chunked
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if chunked {
		req.ContentLength = -1
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Instance")
}

// assertWhole fails for every body a backend saw that is not exactly body:
// a truncated delivery.
func assertWhole(t *testing.T, who string, seen []seenBody, body []byte) {
	t.Helper()
	want := sha256.Sum256(body)
	for _, s := range seen {
		if s.err != nil || s.n != len(body) || s.sum != want {
			t.Errorf("%s got a truncated %s body: %d of %d bytes (declared %d), read error %v",
				who, s.method, s.n, len(body), s.declared, s.err)
		}
	}
}

func randomBody(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

const (
	bodyReplaySite = "http://127.0.0.1:{PORT} {\n\tcx_proxy\n}"
	kib            = 1 << 10
)

func TestBodyReplayedOnlyIfBufferedWhole(t *testing.T) {
	cases := []struct {
		method   string
		size     int
		chunked  bool
		replayed bool
	}{
		{"PUT", 1 * kib, false, true},
		{"PUT", 1 * kib, true, true},
		{"DELETE", 1 * kib, false, true},
		{"PUT", DefaultRequestBuffers - 1, true, true},
		// Caddy buffers up to request_buffers bytes and counts a body of
		// exactly that size as not buffered whole.
		{"PUT", DefaultRequestBuffers, false, false},
		{"PUT", DefaultRequestBuffers, true, false},
		{"PUT", 100 * kib, true, false},
		{"DELETE", 100 * kib, true, false},
		{"PUT", 100 * kib, false, false},
		{"DELETE", 100 * kib, false, false},
		{"PUT", 4 << 20, false, false},
		// Not idempotent: never replayed once sent, whatever the size.
		{"POST", 1 * kib, false, false},
		{"STORE", 1 * kib, false, false},
		{"STORE", 100 * kib, true, false},
	}
	for _, tc := range cases {
		framing := "content-length"
		if tc.chunked {
			framing = "chunked"
		}
		t.Run(fmt.Sprintf("%s_%d_%s", tc.method, tc.size, framing), func(t *testing.T) {
			primary := startBodyBackend(t, "app1", "reset")
			base, backup := bodyFailover(t, bodyReplaySite, primary.url)
			body := randomBody(t, tc.size)
			code, id := sendBody(t, tc.method, base, body, tc.chunked)

			assertWhole(t, "primary", primary.bodies(), body)
			assertWhole(t, "backup", backup.bodies(), body)
			if n := len(primary.bodies()); n != 1 {
				t.Errorf("primary read %d bodies, want 1", n)
			}
			got := len(backup.bodies())
			if tc.replayed {
				if code != http.StatusOK || id != "app2" || got != 1 {
					t.Fatalf("status %d from %q, backup read %d bodies: want the whole body replayed on the backup", code, id, got)
				}
				return
			}
			if code != http.StatusBadGateway || got != 0 {
				t.Fatalf("status %d from %q, backup read %d bodies: want 502 and nothing at the backup", code, id, got)
			}
			// The reset was the primary's failure; the refused replay is
			// no failure of the backup.
			svc := serviceOf(t, heartbeat.DefaultPrefix)
			if svc.health.failing(strings.TrimPrefix(backup.url, "http://"), time.Now()) {
				t.Fatal("the backup is marked failing though no request reached it")
			}
		})
	}
}

func TestUnreadBodyIsRetriedWhole(t *testing.T) {
	t.Run("refused dial", func(t *testing.T) {
		for _, tc := range []struct {
			method  string
			size    int
			chunked bool
		}{
			{"PUT", 4 << 20, false},
			{"PUT", 100 * kib, true},
			{"POST", 100 * kib, false},
			{"STORE", 100 * kib, true},
		} {
			base, backup := bodyFailover(t, bodyReplaySite, closedPortURL(t))
			body := randomBody(t, tc.size)
			code, id := sendBody(t, tc.method, base, body, tc.chunked)
			assertWhole(t, "backup", backup.bodies(), body)
			if code != http.StatusOK || id != "app2" || len(backup.bodies()) != 1 {
				t.Fatalf("%s %d bytes: status %d from %q, backup read %d bodies; a refused dial read nothing, so the body must go whole to the backup",
					tc.method, tc.size, code, id, len(backup.bodies()))
			}
		}
	})
	t.Run("503 before reading", func(t *testing.T) {
		for _, tc := range []struct {
			method  string
			size    int
			chunked bool
		}{
			{"PUT", kib, true},
			{"DELETE", kib, false},
			{"PUT", 100 * kib, false},
		} {
			primary := startBodyBackend(t, "app1", "503")
			base, backup := bodyFailover(t, bodyReplaySite, primary.url)
			body := randomBody(t, tc.size)
			code, id := sendBody(t, tc.method, base, body, tc.chunked)
			assertWhole(t, "backup", backup.bodies(), body)
			if tc.size < DefaultRequestBuffers {
				if code != http.StatusOK || id != "app2" || len(backup.bodies()) != 1 {
					t.Fatalf("%s %d bytes: status %d from %q; want the whole body at the backup", tc.method, tc.size, code, id)
				}
				continue
			}
			// A streamed body may or may not have been read by the
			// transport when the 503 came back: either the replay is
			// refused and the 503 passed on, or the body reaches the
			// backup whole, never cut.
			if code != http.StatusServiceUnavailable && (code != http.StatusOK || id != "app2") {
				t.Fatalf("%s %d bytes: status %d from %q", tc.method, tc.size, code, id)
			}
			t.Logf("%s %d bytes after an unread 503: status %d", tc.method, tc.size, code)
		}
	})
}

func TestTimedOutTryOfStreamedBodyIs504(t *testing.T) {
	site := "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\ttransport http {\n\t\t\tresponse_header_timeout 200ms\n\t\t}\n\t}\n}"
	for _, tc := range []struct {
		size     int
		wantCode int
		wantAt   int // bodies the backup reads
	}{
		{kib, http.StatusOK, 1},
		{100 * kib, http.StatusGatewayTimeout, 0},
	} {
		primary := startBodyBackend(t, "app1", "hang")
		base, backup := bodyFailover(t, site, primary.url)
		body := randomBody(t, tc.size)
		code, _ := sendBody(t, "PUT", base, body, true)
		assertWhole(t, "primary", primary.bodies(), body)
		assertWhole(t, "backup", backup.bodies(), body)
		if code != tc.wantCode || len(backup.bodies()) != tc.wantAt {
			t.Fatalf("%d bytes: status %d, backup read %d bodies; want %d and %d", tc.size, code, len(backup.bodies()), tc.wantCode, tc.wantAt)
		}
	}
}

// triesAndRetries sums the tries counted for id and the retries counted
// for svc.
func triesAndRetries(svc *Service, id string) (tries, retries uint64) {
	for i := range svc.stats.instance(id).codes {
		tries += svc.stats.instance(id).codes[i].Load()
	}
	svc.stats.retries.Range(func(_, v any) bool {
		retries += v.(*atomic.Uint64).Load()
		return true
	})
	return tries, retries
}

func TestRefusedReplayIsNoTryNorRetry(t *testing.T) {
	for _, tc := range []struct {
		name, site string
		size       int
		replayed   bool
	}{
		{"cx_failover buffered", bodyReplaySite, kib, true},
		{"cx_failover streamed", bodyReplaySite, 100 * kib, false},
		// A policy that would pick the primary again: the cx transport
		// itself refuses to send the spent body.
		{"first streamed", "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tlb_policy first\n\t}\n}", 100 * kib, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary := startBodyBackend(t, "app1", "reset")
			base, backup := bodyFailover(t, tc.site, primary.url)
			svc := serviceOf(t, heartbeat.DefaultPrefix)
			tries1, retries := triesAndRetries(svc, "app1")
			tries2, _ := triesAndRetries(svc, "app2")
			body := randomBody(t, tc.size)
			code, _ := sendBody(t, "PUT", base, body, true)
			assertWhole(t, "primary", primary.bodies(), body)
			assertWhole(t, "backup", backup.bodies(), body)
			after1, afterRetries := triesAndRetries(svc, "app1")
			after2, _ := triesAndRetries(svc, "app2")
			want2, wantRetries, wantCode := uint64(0), uint64(0), http.StatusBadGateway
			if tc.replayed {
				want2, wantRetries, wantCode = 1, 1, http.StatusOK
			}
			if code != wantCode || after1-tries1 != 1 || after2-tries2 != want2 || afterRetries-retries != wantRetries {
				t.Fatalf("status %d (want %d); tries counted: app1 %d (want 1), app2 %d (want %d); retries %d (want %d)",
					code, wantCode, after1-tries1, after2-tries2, want2, afterRetries-retries, wantRetries)
			}
			if len(primary.bodies()) != 1 {
				t.Fatalf("primary read %d bodies, want 1", len(primary.bodies()))
			}
		})
	}
}

func TestCxTransportRefusesSpentBodyBehindStaticUpstreams(t *testing.T) {
	primary := startBodyBackend(t, "app1", "reset")
	backup := startBodyBackend(t, "app2", "ok")
	site := fmt.Sprintf("http://127.0.0.1:{PORT} {\n\treverse_proxy %s %s {\n\t\tlb_policy first\n\t\tlb_retries 3\n\t\tlb_retry_match {\n\t\t\tmethod PUT\n\t\t}\n\t\trequest_buffers 64KiB\n\t\ttransport cx\n\t}\n}",
		strings.TrimPrefix(primary.url, "http://"), strings.TrimPrefix(backup.url, "http://"))
	base := gateway(t, startNATS(t), site)
	body := randomBody(t, 100*kib)
	code, _ := sendBody(t, "PUT", base, body, false)
	assertWhole(t, "primary", primary.bodies(), body)
	assertWhole(t, "backup", backup.bodies(), body)
	if code != http.StatusBadGateway || len(primary.bodies()) != 1 || len(backup.bodies()) != 0 {
		t.Fatalf("status %d, primary read %d bodies, backup %d: want 502 after one try", code, len(primary.bodies()), len(backup.bodies()))
	}
}

func TestAttemptBodyHandsOverOnlyAnUnreadStream(t *testing.T) {
	for range 200 {
		src := io.NopCloser(strings.NewReader("payload"))
		b := &attemptBody{ReadCloser: src}
		var n int
		var readErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			n, readErr = b.Read(make([]byte, 16))
		}()
		sealed := b.seal()
		<-done
		// Exactly one of them owns the stream.
		if sealed == (n > 0) || sealed != (readErr == errBodyTaken) {
			t.Fatalf("sealed %v, read %d bytes, error %v", sealed, n, readErr)
		}
	}
}

// sliceBody is a body type whose values cannot be compared.
type sliceBody []byte

func (sliceBody) Read([]byte) (int, error) { return 0, io.EOF }
func (sliceBody) Close() error             { return nil }

// boxBody is comparable, but may hold an incomparable value.
type boxBody struct{ io.ReadCloser }

func TestSameBody(t *testing.T) {
	r := strings.NewReader("x")
	stream := io.NopCloser(r)
	for _, tc := range []struct {
		name string
		a, b io.ReadCloser
		want bool
	}{
		{"one stream", stream, stream, true},
		{"same reader rewrapped", io.NopCloser(r), io.NopCloser(r), true},
		{"fresh readers over one buffer", io.NopCloser(bytes.NewReader(nil)), io.NopCloser(bytes.NewReader(nil)), false},
		{"other types", stream, http.NoBody, false},
		{"incomparable type", sliceBody(nil), sliceBody(nil), true},
		{"incomparable inside", boxBody{sliceBody(nil)}, boxBody{sliceBody(nil)}, true},
		{"distinct pointers", &boxBody{}, &boxBody{}, false},
	} {
		if got := sameBody(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: sameBody = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestMayResend(t *testing.T) {
	fresh := func() io.ReadCloser { return io.NopCloser(bytes.NewReader([]byte("whole"))) }
	stream := io.NopCloser(io.MultiReader(strings.NewReader("stream")))
	if inMemory(stream) || !inMemory(fresh()) {
		t.Fatal("inMemory: only a reader over a buffer is one")
	}
	var tried *bodyTries
	if !tried.mayResend(stream) {
		t.Fatal("a first try may always send")
	}
	tried = &bodyTries{}
	if !tried.mayResend(stream) {
		t.Fatal("a first try may always send")
	}
	// A try that never read the stream hands it over.
	tried.body, tried.watch = stream, &attemptBody{ReadCloser: stream}
	if !tried.mayResend(stream) || tried.mayResend(stream) != true {
		t.Fatal("an unread stream must be sendable again")
	}
	// A try that read from it spends it.
	tried.watch = &attemptBody{ReadCloser: stream}
	_, _ = tried.watch.Read(make([]byte, 1))
	if tried.mayResend(stream) {
		t.Fatal("a read stream must not be sent again")
	}
	if !tried.mayResend(fresh()) {
		t.Fatal("a fresh reader over the whole buffer may always be sent")
	}
	// The same buffer reader again was not watched: it counts as read.
	buf := fresh()
	tried.body, tried.watch = buf, nil
	if tried.mayResend(buf) {
		t.Fatal("the same unwatched reader must not be sent again")
	}
}

// BenchmarkCxProxyPutBody measures PUTs with a small body (buffered whole)
// through cx_proxy with its defaults: the cost of watching the body.
func BenchmarkCxProxyPutBody(b *testing.B) {
	natsURL := startNATS(b)
	app1 := startBackend(b, "app1")
	base := gateway(b, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tstale_after 1m\n\t}\n}")
	newInstance(b, connect(b, natsURL), "app1", app1.url, 0).beat(heartbeat.StateReady)
	servedBy(b, base, "app1", 0x7fffffff)
	body := []byte("body") // what the test backend accepts
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("PUT", base, bytes.NewReader(body))
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
