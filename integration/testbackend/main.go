// Command testbackend is an application instance for the integration
// tests: an HTTP server that announces itself with heartbeat.Publisher.
//
//	testbackend --id app1 --listen 127.0.0.1:0 --nats nats://127.0.0.1:4222
//
// The first line on stdout is `LISTEN 127.0.0.1:NNNN`, the address it
// serves on. Paths:
//
//	GET  /               body `instance=<id>`
//	POST /echo           echoes the request body
//	GET  /slow?ms=N      answers after N ms
//	     /ws             WebSocket echo
//	POST /admin/fail?ms=N  every non-admin path answers 503 for N ms;
//	     &status=S answers S (500-599) instead, &header=H fails only the
//	     requests that carry header H (e.g. one a single gateway adds)
//	GET  /admin/failed   JSON: {"count":N,"first":T,"last":T} the failures answered since
//	     the last POST /admin/fail
//	GET  /admin/count    JSON: requests served per path (admin paths excluded)
//	GET  /admin/conns    JSON: {"opened":N,"open":M} TCP connections accepted so far / open now
//	PUT  /store          reads the whole body, records it, answers `bodylen=N sha256=HEX`;
//	                     with --reset-after-body it resets the connection instead of answering
//	GET  /admin/bodies   JSON: every body PUT /store received: its length, SHA-256, the
//	                     X-Expect-Len header the client sent and the read error, if any
//
// Flags: --id, --listen, --nats, --prefix, --priority, --interval,
// --version, --shutdown-timeout, --debug (log every heartbeat),
// --reset-after-body.
//
// Every response carries `X-Instance: <id>` and `X-Process: <pid>`. SIGTERM/SIGINT announce
// leaving, finish in-flight requests and exit 0; SIGUSR1 announces
// draining, SIGUSR2 ready again.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/net/websocket"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

func main() {
	var (
		id       = flag.String("id", "", "instance id (required)")
		listen   = flag.String("listen", "127.0.0.1:0", "address to serve on; port 0 picks a free one")
		natsURL  = flag.String("nats", "", "NATS server URL(s), comma-separated; empty: do not announce")
		prefix   = flag.String("prefix", heartbeat.DefaultPrefix, "subject prefix")
		priority = flag.Int("priority", 0, "announced priority, lower is preferred")
		interval = flag.Duration("interval", 200*time.Millisecond, "heartbeat interval")
		version  = flag.String("version", "test", "announced version")
		shutdown = flag.Duration("shutdown-timeout", 30*time.Second, "how long SIGTERM waits for in-flight requests")
		debug    = flag.Bool("debug", false, "log every heartbeat")
		reset    = flag.Bool("reset-after-body", false, "PUT /store resets the connection after reading the whole body")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("instance", *id)
	if *id == "" {
		fmt.Fprintln(os.Stderr, "testbackend: --id is required")
		os.Exit(2)
	}

	b := &backend{id: *id, pid: strconv.Itoa(os.Getpid()), counts: map[string]int64{}, resetAfterBody: *reset}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("listen", "error", err)
		os.Exit(1)
	}
	addr := ln.Addr().String()
	fmt.Printf("LISTEN %s\n", addr)

	srv := &http.Server{Handler: b.routes(), ReadHeaderTimeout: 10 * time.Second, ConnState: b.connState}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	// Announce only once the listener accepts connections.
	if err := waitAccepting(addr, 5*time.Second); err != nil {
		log.Error("listener does not accept connections", "error", err)
		os.Exit(1)
	}
	log.Info("serving", "address", addr)

	var pub *heartbeat.Publisher
	if *natsURL != "" {
		nc, err := heartbeat.Connect(*natsURL, nats.Name("testbackend-"+*id))
		if err != nil {
			log.Error("NATS connect", "error", err)
			os.Exit(1)
		}
		defer nc.Close()
		pub, err = heartbeat.NewPublisher(nc, heartbeat.Config{
			Prefix:   *prefix,
			ID:       *id,
			URL:      "http://" + addr,
			Interval: *interval,
			Version:  *version,
			Priority: *priority,
			Logger:   log,
		})
		if err != nil {
			log.Error("publisher", "error", err)
			os.Exit(1)
		}
		if err := pub.Start(); err != nil {
			log.Error("publisher start", "error", err)
			os.Exit(1)
		}
		log.Info("announcing", "nats", *natsURL, "prefix", *prefix, "priority", *priority, "interval", *interval)
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2)
	for {
		select {
		case err := <-serveErr:
			log.Error("serve", "error", err)
			os.Exit(1)
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR1:
				if pub != nil {
					log.Info("draining", "error", pub.SetState(heartbeat.StateDraining))
				}
			case syscall.SIGUSR2:
				if pub != nil {
					log.Info("ready", "error", pub.SetState(heartbeat.StateReady))
				}
			default:
				log.Info("shutting down", "signal", sig.String())
				if pub != nil {
					if err := pub.Leave(); err != nil {
						log.Warn("leave", "error", err)
					}
					log.Info("leaving announced")
				}
				ctx, cancel := context.WithTimeout(context.Background(), *shutdown)
				err := srv.Shutdown(ctx)
				cancel()
				if err != nil {
					log.Warn("shutdown", "error", err)
					os.Exit(1)
				}
				log.Info("stopped", "served", b.total.Load())
				os.Exit(0)
			}
		}
	}
}

// waitAccepting dials addr until it accepts a connection.
func waitAccepting(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type backend struct {
	id        string
	pid       string
	opened    atomic.Int64 // TCP connections accepted
	open      atomic.Int64 // TCP connections open now
	failUntil atomic.Int64 // unix nanos
	total     atomic.Int64

	// failStatus and failHeader shape the failures of /admin/fail: the
	// status answered, and the header a request must carry to fail ("":
	// every request fails).
	failMu     sync.Mutex
	failStatus int
	failHeader string
	failed     failRecord

	// resetAfterBody: PUT /store resets the connection once it has read
	// the body, as a primary that dies mid-request.
	resetAfterBody bool

	mu     sync.Mutex
	counts map[string]int64
	bodies []bodyRecord
}

// failRecord counts the failures /admin/fail made the backend answer.
type failRecord struct {
	Count int64     `json:"count"`
	First time.Time `json:"first,omitzero"`
	Last  time.Time `json:"last,omitzero"`
}

// failNow reports whether r must fail now and with which status, and
// records the failure.
func (b *backend) failNow(r *http.Request) (int, bool) {
	now := time.Now()
	if now.UnixNano() >= b.failUntil.Load() {
		return 0, false
	}
	b.failMu.Lock()
	defer b.failMu.Unlock()
	if b.failHeader != "" && r.Header.Get(b.failHeader) == "" {
		return 0, false
	}
	b.failed.Count++
	if b.failed.First.IsZero() {
		b.failed.First = now
	}
	b.failed.Last = now
	return b.failStatus, true
}

// bodyRecord is one body PUT /store received.
type bodyRecord struct {
	Len       int64  `json:"len"`
	SHA256    string `json:"sha256"`
	ExpectLen string `json:"expect_len"` // the client's X-Expect-Len header
	Err       string `json:"err,omitempty"`
}

// store reads the whole body and records it; then it answers, or resets
// the connection (--reset-after-body).
func (b *backend) store(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	rec := bodyRecord{Len: n, SHA256: hex.EncodeToString(h.Sum(nil)), ExpectLen: r.Header.Get("X-Expect-Len")}
	if err != nil {
		rec.Err = err.Error()
	}
	b.mu.Lock()
	b.bodies = append(b.bodies, rec)
	b.mu.Unlock()
	if b.resetAfterBody {
		resetConn(w)
		return
	}
	fmt.Fprintf(w, "bodylen=%d sha256=%s", rec.Len, rec.SHA256)
}

// resetConn closes the request's connection with a TCP reset (SO_LINGER 0).
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

func (b *backend) connState(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		b.opened.Add(1)
		b.open.Add(1)
	case http.StateClosed, http.StateHijacked:
		b.open.Add(-1)
	}
}

func (b *backend) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "instance=%s", b.id)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			fmt.Fprintf(w, "instance=%s slow=%d", b.id, ms)
		case <-r.Context().Done():
		}
	})
	mux.Handle("/ws", websocket.Handler(func(ws *websocket.Conn) {
		_, _ = io.Copy(ws, ws)
	}))
	mux.HandleFunc("POST /admin/fail", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
			return
		}
		status := http.StatusServiceUnavailable
		if v := r.URL.Query().Get("status"); v != "" {
			if status, err = strconv.Atoi(v); err != nil || status < 500 || status > 599 {
				http.Error(w, "status must be 500 to 599", http.StatusBadRequest)
				return
			}
		}
		b.failMu.Lock()
		b.failStatus, b.failHeader = status, r.URL.Query().Get("header")
		b.failed = failRecord{}
		b.failMu.Unlock()
		b.failUntil.Store(time.Now().Add(time.Duration(ms) * time.Millisecond).UnixNano())
		fmt.Fprintf(w, "failing for %dms", ms)
	})
	mux.HandleFunc("GET /admin/failed", func(w http.ResponseWriter, r *http.Request) {
		b.failMu.Lock()
		data, _ := json.Marshal(b.failed)
		b.failMu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(data)
	})
	mux.HandleFunc("GET /admin/count", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		data, _ := json.Marshal(b.counts)
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(data)
	})
	mux.HandleFunc("PUT /store", b.store)
	mux.HandleFunc("GET /admin/bodies", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		data, _ := json.Marshal(append([]bodyRecord{}, b.bodies...))
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(data)
	})
	mux.HandleFunc("GET /admin/conns", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"opened":%d,"open":%d}`, b.opened.Load(), b.open.Load())
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", b.id)
		w.Header().Set("X-Process", b.pid)
		if len(r.URL.Path) >= 7 && r.URL.Path[:7] == "/admin/" {
			mux.ServeHTTP(w, r)
			return
		}
		b.total.Add(1)
		b.mu.Lock()
		b.counts[r.URL.Path]++
		b.mu.Unlock()
		if status, fail := b.failNow(r); fail {
			http.Error(w, "failing on purpose (/admin/fail)", status)
			return
		}
		mux.ServeHTTP(w, r)
	})
}
