package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
	"github.com/caddy-cx/caddy-cx/membership"
)

// TestMain keeps every embedded NATS server's JetStream store (under
// Caddy's data directory) in a directory of its own, removed at the end.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddy-cx-data-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// jetStreamNATS runs a NATS server with JetStream, its store in a
// temporary directory (or store, to restart on the same data).
func jetStreamNATS(t testing.TB, port int, store string) *server.Server {
	t.Helper()
	if store == "" {
		store = t.TempDir()
	}
	return natstest.Start(t, &server.Options{Port: port, JetStream: true, StoreDir: store})
}

// controlService is a service of prefix following the control bucket
// on its own connection to url, as one gateway's (gw). pooled services
// are the ones the admin API finds.
func controlService(t testing.TB, url, gw, prefix string, pooled bool) *Service {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := &claim{owner: &App{GatewayID: gw}, settings: serviceSettings{membership: membership.Config{Prefix: prefix}}, logger: zap.NewNop()}
	var s *Service
	if pooled {
		s, err = acquireService(&natsLink{}, c)
		if err == nil {
			t.Cleanup(func() { s.release(c) })
		}
	} else {
		s, err = newService(&natsLink{}, c)
		if err == nil {
			t.Cleanup(func() { _ = s.Destruct() })
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := s.start(nc); err != nil {
		t.Fatal(err)
	}
	return s
}

func routes(s *Service, id string) bool {
	for _, r := range s.reg.Snapshot().Routes {
		if r.ID == id {
			return true
		}
	}
	return false
}

// postControl calls the admin API's handler as Caddy's admin server does.
func postControl(t testing.TB, path string) (int, string) {
	t.Helper()
	w := httptest.NewRecorder()
	if err := handleControl(w, httptest.NewRequest(http.MethodPost, path, nil)); err != nil {
		code, _ := asAPIError(err)
		return code, err.Error()
	}
	return w.Code, w.Body.String()
}

// asAPIError is the status of an admin handler's error.
func asAPIError(err error) (int, bool) {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		return ae.HTTPStatus, true
	}
	return http.StatusInternalServerError, false
}

// slowBackend answers /slow only once release is closed.
func slowBackend(t testing.TB, id string, release chan struct{}) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		w.Header().Set("X-Instance", id)
		fmt.Fprint(w, id)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// TestControlDrainFleetWide: a drain through the admin API takes the
// instance out of this gateway's routing before the call returns, out of
// another gateway's within 100 ms, lets its in-flight request finish, and
// ready brings it back everywhere.
func TestControlDrainFleetWide(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	url := ns.ClientURL()
	base := gateway(t, url, `http://127.0.0.1:{PORT} {
	cx_proxy
}`)
	var local *Service
	for _, s := range runningServices() {
		if s.prefix == heartbeat.DefaultPrefix {
			local = s
		}
	}
	if local == nil {
		t.Fatal("the gateway's service is not running")
	}
	other := controlService(t, url, "gw-b", heartbeat.DefaultPrefix, false)
	eventually(t, 5*time.Second, func() bool { return local.controlFollowing() && other.controlFollowing() }, "both gateways following the control bucket")

	nc := connect(t, url)
	release := make(chan struct{})
	app1 := newInstance(t, nc, "app1", slowBackend(t, "app1", release), 0)
	app2 := newInstance(t, nc, "app2", slowBackend(t, "app2", make(chan struct{})), 10)
	stop1, stop2 := app1.keepBeating(), app2.keepBeating()
	defer func() { stop1() }()
	defer stop2()
	eventually(t, 5*time.Second, func() bool {
		return routes(local, "app1") && routes(local, "app2") && routes(other, "app1") && routes(other, "app2")
	}, "both instances routed by both gateways")

	inflight := make(chan string, 1)
	go func() {
		resp, err := client.Get(base + "/slow")
		if err != nil {
			inflight <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		inflight <- fmt.Sprintf("%d %s", resp.StatusCode, body)
	}()
	eventually(t, 5*time.Second, func() bool { return local.inflight.count("app1") == 1 }, "the slow request in flight on app1")

	code, body := postControl(t, "/cx/instances/app1/drain")
	returned := time.Now()
	if code != http.StatusOK {
		t.Fatalf("drain: %d %s", code, body)
	}
	if routes(local, "app1") {
		t.Fatal("app1 still routed by this gateway after the drain call returned")
	}
	var ans controlAnswer
	if err := json.Unmarshal([]byte(body), &ans); err != nil || ans.State != "drain" || ans.ID != "app1" || ans.Service != heartbeat.DefaultPrefix ||
		ans.By != "admin API" || ans.Revision == 0 || ans.Gateway == "" {
		t.Fatalf("drain answer %s (%v)", body, err)
	}
	eventually(t, time.Second, func() bool { return !routes(other, "app1") }, "the other gateway dropping app1")
	took := time.Since(returned)
	t.Logf("drain: other gateway stopped routing app1 %v after the call returned", took)
	if took > 100*time.Millisecond {
		t.Errorf("the other gateway took %v to apply the drain, want <= 100ms", took)
	}
	for range 5 {
		if got, code := get(t, "GET", base+"/"); got != "app2" || code != http.StatusOK {
			t.Fatalf("a new request after the drain went to %q (%d), want app2", got, code)
		}
	}
	close(release)
	if got := <-inflight; got != "200 app1" {
		t.Fatalf("the in-flight request to the drained app1: %s, want 200 app1", got)
	}
	if st := local.status(time.Now(), DefaultStatusLimit); true {
		found := false
		for _, in := range st.Instances {
			if in.ID == "app1" {
				found = true
				if in.Control == nil || in.Control.State != "drain" || !in.Control.Holds || in.Control.By != "admin API" {
					t.Errorf("app1's status control %+v, want a holding drain by the admin API", in.Control)
				}
			}
		}
		if !found {
			t.Error("app1 missing from the status report")
		}
	}

	// a restarted process is not held by the drain of the one before.
	stop1()
	app1.restart()
	stop1 = app1.keepBeating()
	eventually(t, 3*time.Second, func() bool { return routes(local, "app1") && routes(other, "app1") }, "the restarted app1 routed again")

	code, body = postControl(t, "/cx/instances/app2/drain")
	if code != http.StatusOK || routes(local, "app2") {
		t.Fatalf("drain app2: %d %s, still routed %v", code, body, routes(local, "app2"))
	}
	code, body = postControl(t, "/cx/instances/app2/ready")
	returned = time.Now()
	if code != http.StatusOK || !routes(local, "app2") {
		t.Fatalf("ready app2: %d %s, routed %v", code, body, routes(local, "app2"))
	}
	eventually(t, time.Second, func() bool { return routes(other, "app2") }, "the other gateway routing app2 again")
	t.Logf("ready: other gateway routed app2 again %v after the call returned", time.Since(returned))
}

// TestControlMaintenanceSurvivesRestarts: maintenance holds the id across
// its restarts, and a gateway that starts later reads it back before it
// routes anything; ready clears it everywhere.
func TestControlMaintenanceSurvivesRestarts(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	url := ns.ClientURL()
	a := controlService(t, url, "gw-a", heartbeat.DefaultPrefix, true)
	eventually(t, 5*time.Second, a.controlFollowing, "gateway a following")
	code, body := postControl(t, "/cx/instances/app1/maintenance")
	if code != http.StatusOK {
		t.Fatalf("maintenance of an id not seen yet: %d %s", code, body)
	}
	nc := connect(t, url)
	app1 := newInstance(t, nc, "app1", "http://127.0.0.1:9", 0)
	app2 := newInstance(t, nc, "app2", "http://127.0.0.1:10", 0)
	app1.beat(heartbeat.StateReady)
	app2.beat(heartbeat.StateReady)
	eventually(t, 3*time.Second, func() bool { return routes(a, "app2") }, "app2 routed")
	if routes(a, "app1") {
		t.Fatal("app1 routed while in maintenance")
	}
	app1.restart()
	app1.beat(heartbeat.StateReady)
	eventually(t, 3*time.Second, func() bool { m, _ := a.reg.Member("app1"); return m.StartedAt.Equal(app1.msg.StartedAt) }, "app1 restarted")
	if routes(a, "app1") {
		t.Fatal("app1 routed after its restart: maintenance must hold across restarts")
	}

	// a gateway started now: it must never route app1, even before its
	// first read of the bucket.
	b := controlService(t, url, "gw-b", heartbeat.DefaultPrefix, false)
	app1.beat(heartbeat.StateReady)
	app2.beat(heartbeat.StateReady)
	deadline := time.Now().Add(3 * time.Second)
	for !routes(b, "app2") {
		if routes(b, "app1") {
			t.Fatal("the new gateway routed app1 before reading the maintenance back")
		}
		if time.Now().After(deadline) {
			t.Fatal("the new gateway did not route app2")
		}
		time.Sleep(time.Millisecond)
	}
	if routes(b, "app1") {
		t.Fatal("the new gateway routes app1 in maintenance")
	}
	if m, _ := b.reg.Member("app1"); m.Control.State != membership.ControlMaintenance || m.Control.Gateway != "gw-a" {
		t.Fatalf("the new gateway's control of app1: %+v", m.Control)
	}

	code, body = postControl(t, "/cx/instances/app1/ready")
	returned := time.Now()
	if code != http.StatusOK {
		t.Fatalf("ready: %d %s", code, body)
	}
	app1.beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return routes(a, "app1") && routes(b, "app1") }, "app1 back on both gateways")
	t.Logf("ready: app1 routed on both gateways %v after the call returned", time.Since(returned))
}

// TestControlWithoutJetStream: on a NATS without JetStream, routing runs
// at once (it never waits on the bucket) and a control call answers 503
// saying what to enable.
func TestControlWithoutJetStream(t *testing.T) {
	url := startNATS(t)
	started := time.Now()
	a := controlService(t, url, "gw-a", heartbeat.DefaultPrefix, true)
	nc := connect(t, url)
	app1 := newInstance(t, nc, "app1", "http://127.0.0.1:9", 0)
	app1.beat(heartbeat.StateReady)
	eventually(t, 3*time.Second, func() bool { return routes(a, "app1") }, "app1 routed without JetStream")
	t.Logf("without JetStream: routing released %v after the service started", time.Since(started))
	if took := time.Since(started); took > controlRelease+500*time.Millisecond {
		t.Errorf("routing released after %v, want <= %v", took, controlRelease)
	}
	code, body := postControl(t, "/cx/instances/app1/drain")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "enable JetStream") || !strings.Contains(body, "embedded") {
		t.Fatalf("drain without JetStream: %d %s; want 503 saying to enable JetStream or use the embedded NATS", code, body)
	}
	if !routes(a, "app1") || a.controlFollowing() {
		t.Fatalf("after the failed drain: app1 routed %v, following %v", routes(a, "app1"), a.controlFollowing())
	}
}

// TestControlAdminRequests: what the admin API refuses, and why.
func TestControlAdminRequests(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	a := controlService(t, ns.ClientURL(), "gw-a", "cx.one", true)
	controlService(t, ns.ClientURL(), "gw-a", "cx.two", true)
	eventually(t, 5*time.Second, a.controlFollowing, "following")
	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/cx/instances/app1/drain", 405, "use POST"},
		{"POST", "/cx/instances/app1/drain", 400, "cx.one, cx.two"},
		{"POST", "/cx/instances/app1/drain?service=cx.one", 404, "maintenance can be set"},
		{"POST", "/cx/instances/app1/reboot?service=cx.one", 404, "drain, maintenance or ready"},
		{"POST", "/cx/instances/app1/drain?service=cx.three", 404, "running: cx.one, cx.two"},
		{"POST", "/cx/instances/a*b/maintenance?service=cx.one", 400, "A-Z a-z 0-9"},
		{"POST", "/cx/instances/a.b/maintenance?service=cx.one", 400, "A-Z a-z 0-9"},
		{"POST", "/cx/instances/app1/maintenance/x?service=cx.one", 404, "use POST"},
		{"POST", "/cx/instances/app1/maintenance?service=cx.one", 200, `"state":"maintenance"`},
	} {
		w := httptest.NewRecorder()
		err := handleControl(w, httptest.NewRequest(tc.method, tc.path, nil))
		code, text := w.Code, w.Body.String()
		if err != nil {
			code, _ = asAPIError(err)
			text = err.Error()
		}
		if code != tc.code || !strings.Contains(text, tc.want) {
			t.Errorf("%s %s: %d %s; want %d with %q", tc.method, tc.path, code, text, tc.code, tc.want)
		}
	}
}

// TestControlHostileValues: whatever else writes the bucket, a bad value
// is ignored and counted, never applied, never fatal.
func TestControlHostileValues(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	a := controlService(t, ns.ClientURL(), "gw-a", heartbeat.DefaultPrefix, true)
	eventually(t, 5*time.Second, a.controlFollowing, "following")
	js, err := jetstream.New(connect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.KeyValue(ctx, ControlBucket)
	if err != nil {
		t.Fatal(err)
	}
	huge := `{"state":"maintenance","by":"` + strings.Repeat("x", 4000) + `","gateway":"g","at":"2026-01-01T00:00:00Z"}`
	// the bucket itself refuses values beyond an entry's size
	if _, err := kv.Put(ctx, "cx.ha.app2", []byte(huge)); err == nil {
		t.Fatal("the bucket took a 4 KB value")
	}
	for key, val := range map[string]string{
		"cx.ha.app1": "garbage",
		"cx.ha.app3": `{"state":"evict","by":"x","gateway":"g","at":"2026-01-01T00:00:00Z"}`,
		"cx.ha.app4": `{"state":"maintenance","by":"x","gateway":"g","at":"2026-01-01T00:00:00Z","extra":1}`,
		"cx.ha.a=b":  `{"state":"maintenance","by":"x","gateway":"g","at":"2026-01-01T00:00:00Z"}`,
	} {
		if _, err := kv.Put(ctx, key, []byte(val)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(ctx, "cx.ha.app5", membership.Control{State: membership.ControlMaintenance, By: "test"}.Encode()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, func() bool { _, ok := a.reg.Controls()["app5"]; return ok }, "the valid entry after the bad ones applied")
	if got := a.control.Load().rejected.Load(); got != 4 {
		t.Errorf("rejected %d bucket values, want 4", got)
	}
	if n := len(a.reg.Controls()); n != 1 || !a.controlFollowing() {
		t.Errorf("controls %v, following %v: want only app5, still following", a.reg.Controls(), a.controlFollowing())
	}
	if err := kv.Delete(ctx, "cx.ha.app5"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, func() bool { return len(a.reg.Controls()) == 0 }, "a deleted key clearing the hold")
}

// TestControlSurvivesNATSRestart: the watcher follows the bucket again
// after the NATS server it used restarts.
func TestControlSurvivesNATSRestart(t *testing.T) {
	store := t.TempDir()
	port := freePort(t)
	ns := jetStreamNATS(t, port, store)
	url := ns.ClientURL()
	a := controlService(t, url, "gw-a", heartbeat.DefaultPrefix, true)
	eventually(t, 5*time.Second, a.controlFollowing, "following")
	ns.Shutdown()
	ns.WaitForShutdown()
	jetStreamNATS(t, port, store)
	restarted := time.Now()
	eventually(t, 10*time.Second, a.control.Load().bucket.nc.IsConnected, "reconnected")
	eventually(t, 10*time.Second, func() bool {
		code, _ := postControl(t, "/cx/instances/app9/maintenance")
		return code == http.StatusOK
	}, "a write after the restart")
	// written through another connection: only the watcher brings it here.
	js, _ := jetstream.New(connect(t, url))
	kv, err := js.KeyValue(context.Background(), ControlBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), "cx.ha.app8", membership.Control{State: membership.ControlMaintenance, By: "test"}.Encode()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() bool { _, ok := a.reg.Controls()["app8"]; return ok }, "the watcher applying a change after the server restarted")
	t.Logf("watcher resumed %v after the server restarted", time.Since(restarted))
}

// TestControlPrefixNotAKey: a prefix whose tokens cannot be KV keys has
// no control; routing is not held back for it.
func TestControlPrefixNotAKey(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	a := controlService(t, ns.ClientURL(), "gw-a", "cx.h$a", true)
	nc := connect(t, ns.ClientURL())
	app1 := newInstance(t, nc, "app1", "http://127.0.0.1:9", 0)
	app1.prefix = "cx.h$a"
	app1.beat(heartbeat.StateReady)
	eventually(t, 2*time.Second, func() bool { return routes(a, "app1") }, "app1 routed")
	code, body := postControl(t, "/cx/instances/app1/drain?service=cx.h$a")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "rename the prefix") {
		t.Fatalf("drain under a prefix that is no KV key: %d %s", code, body)
	}
}

// TestEmbeddedStoreDirs: two embedded servers never share a store.
func TestEmbeddedStoreDirs(t *testing.T) {
	a, b := embeddedStoreDir("127.0.0.1:4222"), embeddedStoreDir("127.0.0.1:4223")
	if a == b || !strings.HasPrefix(a, os.Getenv("XDG_DATA_HOME")) {
		t.Fatalf("store dirs %s and %s", a, b)
	}
	for _, addr := range []string{"..", ".", "", "[::1]:4222", "a/../b:1"} {
		if s := sanitizeAddr(addr); s == "." || s == ".." || strings.ContainsAny(s, "/\\:") {
			t.Errorf("sanitizeAddr(%q) = %q", addr, s)
		}
	}
}

// jetStreamCluster runs n NATS servers with JetStream in one cluster on
// loopback and returns them once JetStream has a meta leader.
func jetStreamCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	nodes := make([]*server.Server, n)
	for i := range nodes {
		nodes[i] = natstest.Start(t, &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), JetStream: true, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "cx", Host: "127.0.0.1", Port: ports[i]}, Routes: routes,
		})
	}
	eventually(t, 20*time.Second, func() bool {
		for _, s := range nodes {
			if !s.JetStreamIsCurrent() || s.NumRoutes() < n-1 {
				return false
			}
		}
		return nodes[0].JetStreamIsLeader() || nodes[1].JetStreamIsLeader() || nodes[2].JetStreamIsLeader()
	}, "a JetStream cluster with a meta leader")
	return nodes
}

// TestControlSurvivesClusterNodeDown: on a 3-node cluster the bucket has
// 3 replicas; the node a gateway is connected to dies, and the gateway
// still holds what was set and follows what is set after.
func TestControlSurvivesClusterNodeDown(t *testing.T) {
	nodes := jetStreamCluster(t, 3)
	urls := make([]string, len(nodes))
	for i, s := range nodes {
		urls[i] = s.ClientURL()
	}
	// a connects to node 1 first, b to node 2; both know all three.
	a := controlService(t, strings.Join(urls, ","), "gw-a", heartbeat.DefaultPrefix, true)
	b := controlService(t, strings.Join([]string{urls[1], urls[2], urls[0]}, ","), "gw-b", heartbeat.DefaultPrefix, false)
	eventually(t, 20*time.Second, func() bool { return a.controlFollowing() && b.controlFollowing() }, "both following")
	js, err := jetstream.New(connect(t, urls[2]))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "KV_"+ControlBucket)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.CachedInfo().Config.Replicas; r != 3 {
		t.Errorf("the bucket has %d replicas on a 3-node cluster, want 3", r)
	}
	if code, body := postControl(t, "/cx/instances/app1/maintenance"); code != http.StatusOK {
		t.Fatalf("maintenance: %d %s", code, body)
	}
	eventually(t, time.Second, func() bool { _, ok := b.reg.Controls()["app1"]; return ok }, "b applying the maintenance")

	// the node a is connected to dies.
	var dead *server.Server
	for _, s := range nodes {
		if s.ClientURL() == a.control.Load().bucket.nc.ConnectedUrl() {
			dead = s
		}
	}
	if dead == nil {
		t.Fatalf("a is connected to %s, none of the nodes", a.control.Load().bucket.nc.ConnectedUrl())
	}
	deadURL := dead.ClientURL()
	dead.Shutdown()
	killed := time.Now()
	eventually(t, 20*time.Second, func() bool {
		nc := a.control.Load().bucket.nc
		return nc.IsConnected() && nc.ConnectedUrl() != deadURL && a.controlFollowing()
	}, "a following again on another node")
	t.Logf("cluster node down: a followed the bucket again %v later", time.Since(killed).Round(time.Millisecond))
	if _, ok := a.reg.Controls()["app1"]; !ok {
		t.Fatal("a lost app1's maintenance when its node died")
	}
	// written through b: a's fresh watcher brings it.
	eventually(t, 20*time.Second, func() bool {
		_, _, err := b.setControl(context.Background(), "app2", membership.ControlMaintenance, "test")
		return err == nil
	}, "b writing after the node died")
	written := time.Now()
	eventually(t, 5*time.Second, func() bool { _, ok := a.reg.Controls()["app2"]; return ok }, "a applying b's write after its node died")
	t.Logf("cluster node down: a applied b's write %v after it was written", time.Since(written).Round(time.Microsecond))
}

// cxService is the running service of prefix, once the config started.
func cxService(t *testing.T, prefix string) *Service {
	t.Helper()
	var found *Service
	eventually(t, 5*time.Second, func() bool {
		for _, s := range runningServices() {
			if s.prefix == prefix {
				found = s
			}
		}
		return found != nil && found.controlFollowing()
	}, "the service following the control bucket")
	return found
}

// TestEmbeddedNATSKeepsControlAcrossRestart: the embedded NATS runs
// JetStream (with the app's token) under Caddy's data directory, so a
// maintenance set through it is read back by a gateway started anew; two
// embedded servers on different ports keep separate stores.
func TestEmbeddedNATSKeepsControlAcrossRestart(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cx := "\t\tembedded_nats " + natsAddr + "\n\t\ttoken embedded-secret"
	port := freePort(t)
	runGateway(t, logFile, cx, port, "\tcx_proxy")
	s := cxService(t, heartbeat.DefaultPrefix)
	if code, body := postControl(t, "/cx/instances/app1/maintenance"); code != http.StatusOK {
		t.Fatalf("maintenance on the embedded NATS: %d %s", code, body)
	}
	store := embeddedStoreDir(natsAddr)
	if _, err := os.Stat(filepath.Join(store, "jetstream")); err != nil {
		t.Fatalf("no JetStream store under %s: %v", store, err)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	// the whole gateway again: a new embedded server, a new service.
	runGateway(t, logFile, cx, port, "\tcx_proxy")
	again := cxService(t, heartbeat.DefaultPrefix)
	if again == s {
		t.Fatal("the service survived caddy.Stop")
	}
	if c := again.reg.Controls()["app1"]; c.State != membership.ControlMaintenance || c.By != "admin API" {
		t.Fatalf("after the restart, app1's control is %+v: want the maintenance read back from the store", c)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	// another address, another store: nothing to read back.
	other := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	runGateway(t, logFile, "\t\tembedded_nats "+other, freePort(t), "\tcx_proxy")
	fresh := cxService(t, heartbeat.DefaultPrefix)
	if n := len(fresh.reg.Controls()); n != 0 || embeddedStoreDir(other) == store {
		t.Fatalf("an embedded server on %s sees %d controls (store %s): it shares %s's store", other, n, embeddedStoreDir(other), natsAddr)
	}
}
