package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNATS runs a NATS server in the test process on a free port.
func startNATS(t testing.TB) string {
	t.Helper()
	return secureNATS(t, &server.Options{})
}

func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// gateway loads a Caddyfile site block (with {NATS} and {PORT} filled in)
// into the in-process Caddy and returns the site's base URL.
func gateway(t testing.TB, natsURL, site string) string {
	t.Helper()
	port := freePort(t)
	site = strings.ReplaceAll(site, "{PORT}", fmt.Sprint(port))
	caddyfile := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n%s\n", natsURL, site)
	loadCaddyfile(t, caddyfile)
	t.Cleanup(func() { _ = caddy.Stop() })
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, 5*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "gateway listening")
	return base
}

func loadCaddyfile(t testing.TB, caddyfile string) {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Logf("caddyfile warning: %s", w.String())
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// backend is a real HTTP server on loopback that names itself.
type backend struct {
	id       string
	version  string // sent as X-Version when set
	url      string
	failing  atomic.Bool // answer 503 to everything
	mu       sync.Mutex
	served   map[string]int // method -> count
	listener net.Listener
	srv      *http.Server
}

func startBackend(t testing.TB, id string) *backend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{id: id, url: "http://" + l.Addr().String(), served: map[string]int{}, listener: l}
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve)}
	go func() { _ = b.srv.Serve(l) }()
	t.Cleanup(b.close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.served[r.Method]++
	b.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Instance", b.id)
	if b.version != "" {
		w.Header().Set("X-Version", b.version)
	}
	if r.ContentLength > 0 && string(body) != "body" {
		http.Error(w, "truncated body", http.StatusBadRequest)
		return
	}
	if b.failing.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	fmt.Fprint(w, b.id)
}

func (b *backend) count(method string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.served[method]
}

func (b *backend) close() { _ = b.srv.Close() }

// instance publishes heartbeats for a backend by hand, so tests control
// every field and every message.
type instance struct {
	t      testing.TB
	nc     *nats.Conn
	prefix string
	msg    heartbeat.Message
}

func newInstance(t testing.TB, nc *nats.Conn, id, url string, priority int) *instance {
	return &instance{t: t, nc: nc, prefix: heartbeat.DefaultPrefix, msg: heartbeat.Message{
		Proto: heartbeat.Proto, ID: id, URL: url, State: heartbeat.StateReady,
		StartedAt: time.Now().UTC(), IntervalMS: 200, Priority: priority, Version: "1.0",
	}}
}

// beat publishes one heartbeat in state s and waits until the server has it.
func (i *instance) beat(s heartbeat.State) {
	i.t.Helper()
	i.msg.Seq++
	i.msg.State = s
	data, err := heartbeat.Encode(&i.msg)
	if err != nil {
		i.t.Fatal(err)
	}
	i.raw(heartbeat.HeartbeatSubject(i.prefix, i.msg.ID), data)
}

func (i *instance) raw(subject string, data []byte) {
	i.t.Helper()
	if err := i.nc.Publish(subject, data); err != nil {
		i.t.Fatal(err)
	}
	if err := i.nc.Flush(); err != nil {
		i.t.Fatal(err)
	}
}

// restart makes the instance a new process: later started_at, seq from 1.
func (i *instance) restart() {
	i.msg.StartedAt = time.Now().UTC().Add(time.Millisecond)
	i.msg.Seq = 0
}

// keepBeating publishes ready heartbeats every interval until stopped.
func (i *instance) keepBeating() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Duration(i.msg.IntervalMS) * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				i.msg.Seq++
				data, _ := heartbeat.Encode(&i.msg)
				_ = i.nc.Publish(heartbeat.HeartbeatSubject(i.prefix, i.msg.ID), data)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// get returns the serving instance's id (X-Instance) and status.
func get(t testing.TB, method, url string) (string, int) {
	t.Helper()
	var body io.Reader
	if method == "POST" || method == "PUT" || method == "PATCH" {
		body = strings.NewReader("body")
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Header.Get("X-Instance"), resp.StatusCode
}

// servedBy polls GET until id serves it.
func servedBy(t testing.TB, base, id string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, within, func() bool {
		got, _ := get(t, "GET", base)
		return got == id
	}, "a request served by "+id)
	return time.Since(start)
}

// serviceOf returns the running service of prefix.
func serviceOf(t testing.TB, prefix string) *Service {
	t.Helper()
	var found *Service
	for _, s := range runningServices() {
		if s.prefix == prefix {
			found = s
		}
	}
	if found == nil {
		t.Fatalf("no service for prefix %s", prefix)
	}
	return found
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// memberOf returns what the registry knows of id.
func memberOf(t testing.TB, id string) membership.Member {
	t.Helper()
	for _, m := range serviceOf(t, heartbeat.DefaultPrefix).reg.Members() {
		if m.ID == id {
			return m
		}
	}
	t.Fatalf("no member %s", id)
	return membership.Member{}
}

// getsInBackground sends GET url, one request after another, until the
// returned stop is called; seen gets each answer (its body is closed
// afterwards) or error.
func getsInBackground(url string, seen func(*http.Response, error)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			resp, err := client.Get(url)
			seen(resp, err)
			if err == nil {
				resp.Body.Close()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
