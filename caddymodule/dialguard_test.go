package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// countingListener is a loopback listener that must never be reached: it
// counts accepted connections and bytes received.
type countingListener struct {
	l        net.Listener
	accepted atomic.Int64
	bytes    atomic.Int64
	done     atomic.Int64 // connections read to their end
}

func listenCounting(t *testing.T, network, addr string) *countingListener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s here: %v", addr, err)
	}
	c := &countingListener{l: l}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			c.accepted.Add(1)
			go func() {
				defer conn.Close()
				n, _ := io.Copy(io.Discard, conn)
				c.bytes.Add(n)
				c.done.Add(1)
			}()
		}
	}()
	t.Cleanup(func() { _ = l.Close() })
	return c
}

func (c *countingListener) port() int { return c.l.Addr().(*net.TCPAddr).Port }

// loadGateway loads a whole Caddyfile (globals included) and waits for
// the listener at port.
func loadGateway(t *testing.T, caddyfile string, port int) string {
	t.Helper()
	loadCaddyfile(t, caddyfile)
	t.Cleanup(func() { _ = caddy.Stop() })
	eventually(t, 5*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "gateway listening")
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

// processed publishes a marker heartbeat and waits for it: everything
// published before it was handled.
func processed(t *testing.T, publish func(id, url string, prio int) *instance, id string) {
	t.Helper()
	marker := startBackend(t, id)
	publish(id, marker.url, 9).beat(heartbeat.StateReady)
	eventually(t, 2*time.Second, func() bool { return stateOf(t, id) == "active" }, "marker "+id)
}

func assertNotMember(t *testing.T, id string) {
	t.Helper()
	for _, m := range serviceOf(t, heartbeat.DefaultPrefix).reg.Members() {
		if m.ID == id {
			t.Fatalf("%s was admitted: %+v", id, m)
		}
	}
}

// assertServedBy sends n requests and wants each served 200 by id.
func assertServedBy(t *testing.T, base, id string, n int) {
	t.Helper()
	for range n {
		if got, code := get(t, "GET", base); code != http.StatusOK || got != id {
			t.Fatalf("status %d from %q, want 200 from %s", code, got, id)
		}
	}
}

func TestAdminAPIIsNeverAnInstance(t *testing.T) {
	natsURL := startNATS(t)
	port, adminPort := freePort(t), freePort(t)
	base := loadGateway(t, fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n"+
		"http://127.0.0.1:%d {\n\tcx_proxy {\n\t\tallow_networks 127.0.0.0/8\n\t\tstale_after 10s\n\t}\n}\n", adminPort, natsURL, port), port)
	nc := connect(t, natsURL)
	publish := func(id, url string, prio int) *instance { return newInstance(t, nc, id, url, prio) }
	good := startBackend(t, "good")
	publish("good", good.url, 5).beat(heartbeat.StateReady)
	servedBy(t, base, "good", 2*time.Second)
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	if resp, err := http.Get(adminURL + "/config/"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the admin API is not up at %s: %v", adminURL, err)
	} else {
		resp.Body.Close()
	}

	// At heartbeat time: the admin address is one of the gateway's own.
	publish("evil", adminURL, -1000).beat(heartbeat.StateReady)
	processed(t, publish, "marker")
	assertNotMember(t, "evil")
	req, _ := http.NewRequest("GET", base+"/config/", nil)
	req.Host = fmt.Sprintf("127.0.0.1:%d", adminPort)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("X-Instance") != "good" || strings.Contains(string(body), "apps") {
		t.Fatalf("GET /config/ through the site: %d from %q: %.200s", resp.StatusCode, resp.Header.Get("X-Instance"), body)
	}

	// At dial time: with the heartbeat check bypassed (as a DNS name that
	// changes its answer would), the dial itself is refused and the
	// request goes to the legitimate instance.
	svc := serviceOf(t, heartbeat.DefaultPrefix)
	svc.loops.Store(nil)
	publish("evil2", adminURL, -1000).beat(heartbeat.StateReady)
	eventually(t, 2*time.Second, func() bool { return stateOf(t, "evil2") == "active" }, "evil2 admitted with the heartbeat check off")
	assertServedBy(t, base, "good", 20)
	// a refused dial sent nothing: even a POST goes on to another instance.
	if id, code := get(t, "POST", base); code != http.StatusOK || id != "good" {
		t.Fatalf("POST: status %d from %q, want 200 from good", code, id)
	}
	if n := svc.DialRefusals()[refusedLoop]; n == 0 {
		t.Fatalf("no dial refused as a loop: %v", svc.DialRefusals())
	} else {
		t.Logf("dials to the admin API refused: %d", n)
	}
	series := `caddy_cx_dial_refused_total{reason="loop",service="cx.ha"}`
	if got := scrape(t, adminURL+"/metrics")[series]; got != float64(svc.DialRefusals()[refusedLoop]) || got == 0 {
		t.Fatalf("%s = %v, want the %d refusals", series, got, svc.DialRefusals()[refusedLoop])
	}
}

func TestAdminAPIByNameIsRefusedAtDialTime(t *testing.T) {
	port, adminPort := freePort(t), freePort(t)
	before := defaultRefusals.counts()[refusedLoop]
	// A plain reverse_proxy with the cx transport and a name: no heartbeat
	// check is involved, only the dial guard.
	base := loadGateway(t, fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tcx {\n\t\tnats nats://127.0.0.1:1\n\t}\n}\n"+
		"http://:%d {\n\treverse_proxy localhost:%d {\n\t\ttransport cx\n\t}\n}\n", adminPort, port, adminPort), port)
	req, _ := http.NewRequest("GET", base+"/config/", nil)
	req.Host = fmt.Sprintf("localhost:%d", adminPort)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(string(body), "apps") {
		t.Fatalf("GET /config/ via localhost: %d: %.200s", resp.StatusCode, body)
	}
	if after := defaultRefusals.counts()[refusedLoop]; after <= before {
		t.Fatalf("loop refusals %d -> %d", before, after)
	}
}

func TestUnspecifiedAddressesAreNotInstances(t *testing.T) {
	natsURL := startNATS(t)
	port, port2 := freePort(t), freePort(t)
	before := defaultRefusals.counts()[refusedLoop]
	base := loadGateway(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n"+
		"http://127.0.0.1:%d {\n\tcx_proxy {\n\t\tstale_after 10s\n\t}\n}\n"+
		"http://127.0.0.1:%d {\n\treverse_proxy 0.0.0.0:%d [::]:%d {\n\t\ttransport cx\n\t\tlb_retries 2\n\t}\n}\n",
		natsURL, port, port2, port2, port2), port)
	nc := connect(t, natsURL)
	publish := func(id, url string, prio int) *instance { return newInstance(t, nc, id, url, prio) }
	good := startBackend(t, "good")
	publish("good", good.url, 5).beat(heartbeat.StateReady)
	servedBy(t, base, "good", 2*time.Second)
	for i, url := range []string{fmt.Sprintf("http://0.0.0.0:%d", port), fmt.Sprintf("http://[::]:%d", port)} {
		publish(fmt.Sprintf("self%d", i), url, -1000).beat(heartbeat.StateReady)
	}
	processed(t, publish, "marker")
	assertNotMember(t, "self0")
	assertNotMember(t, "self1")
	assertServedBy(t, base, "good", 10)

	// At dial time (a site proxying to itself through 0.0.0.0 and [::]):
	// refused at once, no recursion.
	start := time.Now()
	_, code := get(t, "GET", fmt.Sprintf("http://127.0.0.1:%d", port2))
	if code != http.StatusBadGateway || time.Since(start) > time.Second {
		t.Fatalf("self-proxy through unspecified addresses: %d after %v, want 502 at once", code, time.Since(start))
	}
	after := defaultRefusals.counts()[refusedLoop]
	if after-before < 2 {
		t.Fatalf("loop refusals %d -> %d, want both addresses refused", before, after)
	}
}

func TestEmbeddedNATSPortIsNotAnInstance(t *testing.T) {
	port, natsPort := freePort(t), freePort(t)
	base := loadGateway(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tembedded_nats 127.0.0.1:%d\n\t}\n}\n"+
		"http://127.0.0.1:%d {\n\tcx_proxy {\n\t\tallow_networks 127.0.0.0/8\n\t\tstale_after 10s\n\t}\n}\n", natsPort, port), port)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	nc := connect(t, natsURL)
	publish := func(id, url string, prio int) *instance { return newInstance(t, nc, id, url, prio) }
	good := startBackend(t, "good")
	publish("good", good.url, 5).beat(heartbeat.StateReady)
	servedBy(t, base, "good", 3*time.Second)
	publish("evil", natsURL, -1000).beat(heartbeat.StateReady)
	processed(t, publish, "marker")
	assertNotMember(t, "evil")

	key := fmt.Sprintf("127.0.0.1:%d", natsPort)
	emb, loaded, _ := embeddedPool.LoadOrNew(key, nil)
	if !loaded {
		t.Fatal("no embedded server")
	}
	defer func() { _, _ = embeddedPool.Delete(key) }()
	srv := emb.(*embeddedServer).srv
	v, _ := srv.Varz(nil)
	connsBefore := v.TotalConnections

	svc := serviceOf(t, heartbeat.DefaultPrefix)
	svc.loops.Store(nil) // bypass the heartbeat check: the dial guard alone
	publish("evil2", fmt.Sprintf("http://127.0.0.1:%d", natsPort), -1000).beat(heartbeat.StateReady)
	eventually(t, 2*time.Second, func() bool { return stateOf(t, "evil2") == "active" }, "evil2 admitted with the heartbeat check off")
	assertServedBy(t, base, "good", 20)
	v, _ = srv.Varz(nil)
	t.Logf("connections to the embedded NATS during 20 requests: %d", v.TotalConnections-connsBefore)
	if v.TotalConnections != connsBefore {
		t.Fatalf("the proxy connected to the embedded NATS: %d -> %d connections", connsBefore, v.TotalConnections)
	}
	if svc.DialRefusals()[refusedLoop] == 0 {
		t.Fatal("no loop refusal counted")
	}
}

func TestListenerAddedByReloadIsNotAnInstance(t *testing.T) {
	natsURL := startNATS(t)
	port, port2 := freePort(t), freePort(t)
	globals := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n", natsURL)
	site := fmt.Sprintf("http://127.0.0.1:%d {\n\tcx_proxy {\n\t\tstale_after 10s\n\t}\n}\n", port)
	base := loadGateway(t, globals+site, port)
	nc := connect(t, natsURL)
	publish := func(id, url string, prio int) *instance { return newInstance(t, nc, id, url, prio) }
	good := startBackend(t, "good")
	publish("good", good.url, 5).beat(heartbeat.StateReady)
	servedBy(t, base, "good", 2*time.Second)

	// The reload adds a server; its address becomes one of the gateway's.
	loadCaddyfile(t, globals+site+fmt.Sprintf("http://127.0.0.1:%d {\n\theader X-Instance own\n\trespond \"own\"\n}\n", port2))
	eventually(t, 5*time.Second, func() bool {
		_, code := get(t, "GET", fmt.Sprintf("http://127.0.0.1:%d", port2))
		return code == http.StatusOK
	}, "the new server")
	publish("evil", fmt.Sprintf("http://127.0.0.1:%d", port2), -1000).beat(heartbeat.StateReady)
	processed(t, publish, "marker")
	assertNotMember(t, "evil")
	assertServedBy(t, base, "good", 10)

	// and at dial time, with the heartbeat check bypassed.
	svc := serviceOf(t, heartbeat.DefaultPrefix)
	svc.loops.Store(nil)
	publish("evil2", fmt.Sprintf("http://127.0.0.1:%d", port2), -1000).beat(heartbeat.StateReady)
	eventually(t, 2*time.Second, func() bool { return stateOf(t, "evil2") == "active" }, "evil2 admitted with the heartbeat check off")
	assertServedBy(t, base, "good", 10)
	if svc.DialRefusals()[refusedLoop] == 0 {
		t.Fatal("no loop refusal counted")
	}
}

// refusedAs reports whether err is a dial error (retried by Caddy on
// another upstream) from the guard refusing for reason. DialError does not
// unwrap, so the guard's error is recognised by its text.
func refusedAs(err error, reason string) bool {
	var dialErr reverseproxy.DialError
	return errors.As(err, &dialErr) && strings.Contains(err.Error(), "dial refused ("+reason+")")
}

// guardedTransport provisions a cx transport outside a config.
func guardedTransport(t *testing.T) *Transport {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(func() { cancel() })
	tr := new(Transport)
	if err := tr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return tr
}

// roundTripFor sends GET url through tr as a request routed by svc.
func roundTripFor(tr *Transport, svc *Service, url string) (*http.Response, error) {
	vars := map[string]any{}
	if svc != nil {
		vars[varRequest] = requestWith(candidatePool{svc: svc})
	}
	ctx := context.WithValue(context.Background(), caddyhttp.VarsCtxKey, vars)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	return tr.HTTPTransport.RoundTrip(req)
}

func TestAllowNetworksAppliesToResolvedNames(t *testing.T) {
	tr := guardedTransport(t)
	target := listenCounting(t, "tcp", "127.0.0.1:0")
	outside := &Service{refusals: newDialRefusals(nil)}
	outside.allow.Store(&[]netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")})
	_, err := roundTripFor(tr, outside, fmt.Sprintf("http://localhost:%d/", target.port()))
	if !refusedAs(err, refusedNetwork) {
		t.Fatalf("localhost outside allow_networks: %v, want a refused dial error (network)", err)
	}
	if target.accepted.Load() != 0 {
		t.Fatalf("the refused peer accepted %d connections", target.accepted.Load())
	}

	ok := startBackend(t, "inside")
	inside := &Service{refusals: newDialRefusals(nil)}
	inside.allow.Store(&[]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	resp, err := roundTripFor(tr, inside, strings.Replace(ok.url, "127.0.0.1", "localhost", 1))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("localhost inside allow_networks: %v", err)
	}
	resp.Body.Close()
	if ok.count("GET") != 1 {
		t.Fatalf("the allowed instance served %d requests", ok.count("GET"))
	}
}

func TestUnspecifiedAndMetadataPeersAreRefusedBeforeConnecting(t *testing.T) {
	tr := guardedTransport(t)
	target := listenCounting(t, "tcp", "127.0.0.1:0")
	svc := &Service{refusals: newDialRefusals(nil)}
	for _, c := range []struct{ url, reason string }{
		{fmt.Sprintf("http://0.0.0.0:%d/", target.port()), refusedLoop},
		{fmt.Sprintf("http://[::]:%d/", target.port()), refusedLoop},
		{"http://169.254.169.254:80/latest/meta-data/", refusedNetwork},
		{"http://[fe80::1]:80/", refusedNetwork},
		{"http://[fd00:ec2::254]:80/", refusedNetwork},
	} {
		_, err := roundTripFor(tr, svc, c.url)
		if !refusedAs(err, c.reason) {
			t.Errorf("%s: %v, want refused (%s)", c.url, err, c.reason)
		}
	}
	if target.accepted.Load() != 0 {
		t.Fatalf("the loopback listener behind 0.0.0.0 accepted %d connections", target.accepted.Load())
	}
	if got := svc.DialRefusals(); got[refusedLoop] != 2 || got[refusedNetwork] != 3 {
		t.Fatalf("refusals %v, want loop 2 and network 3", got)
	}
}

// TestConnectedPeerIsChecked: the check before dialing passes (the
// address asked for is allowed), but the connection lands on a refused
// peer, as when a name resolves differently at dial time (DNS
// rebinding): it is closed before any byte is sent.
func TestConnectedPeerIsChecked(t *testing.T) {
	tr := guardedTransport(t)
	target := listenCounting(t, "tcp", "127.0.0.1:0")
	svc := &Service{refusals: newDialRefusals(nil)}
	svc.allow.Store(&[]netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")})
	rebinding := tr.guardDial(func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", target.l.Addr().String())
	})
	ctx := context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{varRequest: requestWith(candidatePool{svc: svc})})
	conn, err := rebinding(ctx, "tcp", "127.0.0.2:80")
	if conn != nil || !refusedAs(err, refusedNetwork) {
		t.Fatalf("%v, want a refused dial", err)
	}
	eventually(t, time.Second, func() bool { return target.accepted.Load() == 1 }, "the connection the guard closed")
	// the reader sees EOF once the guard closed the connection
	eventually(t, time.Second, func() bool { return target.done.Load() == 1 }, "the closed connection drained")
	if n := target.bytes.Load(); n != 0 {
		t.Fatalf("%d bytes reached the refused peer", n)
	}
}

func TestConfirmWithFollowsNoRedirect(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tstale_after 400ms\n\t\tconfirm_with /health\n\t}\n}")
	nc := connect(t, natsURL)
	elsewhere := startBackend(t, "elsewhere") // answers 200 to anything
	redirector := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			http.Redirect(w, r, elsewhere.url+"/health", http.StatusFound)
			return
		}
		w.Header().Set("X-Instance", "app1")
		fmt.Fprint(w, "app1")
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = redirector.Serve(l) }()
	t.Cleanup(func() { _ = redirector.Close() })
	app2 := startBackend(t, "app2")
	newInstance(t, nc, "app1", "http://"+l.Addr().String(), 0).beat(heartbeat.StateReady)
	i2 := newInstance(t, nc, "app2", app2.url, 1)
	i2.beat(heartbeat.StateReady)
	t.Cleanup(i2.keepBeating())
	servedBy(t, base, "app1", time.Second)
	// app1 is silent; its probe answers 302 to a url that would answer 200.
	eventually(t, 3*time.Second, func() bool { return stateOf(t, "app1") == "stale" }, "app1 stale: a redirect is no confirmation")
	if n := elsewhere.count("GET"); n != 0 {
		t.Fatalf("the probe followed the redirect: %d requests elsewhere", n)
	}
	servedBy(t, base, "app2", time.Second)
}

func TestConfirmWithUsesTheDialGuard(t *testing.T) {
	target := listenCounting(t, "tcp", "127.0.0.1:0")
	probe := confirmProbe("/health", func() dialPolicy {
		return dialPolicy{allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}, refusals: newDialRefusals(nil)}
	})
	if probe(fmt.Sprintf("http://127.0.0.1:%d", target.port())) {
		t.Fatal("confirmed through a refused address")
	}
	if probe(fmt.Sprintf("http://0.0.0.0:%d", target.port())) {
		t.Fatal("confirmed through 0.0.0.0")
	}
	if n := target.accepted.Load(); n != 0 {
		t.Fatalf("the probe connected %d times to a refused address", n)
	}
}

func TestH2CIsGuardedAndHTTP3Refused(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h3 := new(Transport)
	h3.Versions = []string{"3"}
	if err := h3.Provision(ctx); err == nil || !strings.Contains(err.Error(), "HTTP/3") {
		t.Fatalf("versions 3: %v, want refused at provision", err)
	}
	h2c := new(Transport)
	h2c.Versions = []string{"h2c"}
	if err := h2c.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	target := listenCounting(t, "tcp", "127.0.0.1:0")
	_, err := roundTripFor(h2c, &Service{refusals: newDialRefusals(nil)}, fmt.Sprintf("http://0.0.0.0:%d/", target.port()))
	if !refusedAs(err, refusedLoop) || target.accepted.Load() != 0 {
		t.Fatalf("h2c to 0.0.0.0: %v, %d connections accepted", err, target.accepted.Load())
	}
}

func TestDialRefusalsAreCountedAndLogRateLimited(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	r := newDialRefusals(zap.New(core))
	for i := range 100 {
		r.add(refusedLoop, fmt.Sprintf("127.0.0.1:%d is one of the gateway's own listeners", i))
	}
	r.add(refusedNetwork, "169.254.169.254:80 is link-local")
	if got := r.counts(); got[refusedLoop] != 100 || got[refusedNetwork] != 1 {
		t.Fatalf("counts %v", got)
	}
	if n := logs.Len(); n != 2 {
		t.Fatalf("%d log lines for 101 refusals of 2 reasons within 5s, want 2", n)
	}
	// once the window has passed, the next line says how many were not logged.
	r.now = func() time.Time { return time.Now().Add(dialRefusalLogEvery) }
	r.add(refusedLoop, "again")
	last := logs.All()[logs.Len()-1].ContextMap()
	if last["reason"] != refusedLoop || last["similar_refusals_not_logged"] != int64(99) {
		t.Fatalf("last line %v, want 99 refusals not logged", last)
	}
}

func requestWith(c candidatePool) *proxyRequest {
	st := &proxyRequest{}
	st.setPool(c)
	return st
}
