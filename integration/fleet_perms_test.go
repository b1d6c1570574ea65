package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestFleetGatewayUserPermissions runs the per-gateway NATS user of
// docs/nats-permissions.md ("Gateways of a fleet"), taken from the doc as
// it is, for gateways gw-a and gw-b on a nats-server with JetStream, with
// instance users that may publish only their own heartbeat subject:
//
//   - the gateways see each other (their gw subjects), and a drain through
//     gw-a applies on gw-b (the control bucket's JetStream API);
//   - gw-a's user cannot publish gw-b's heartbeat or observation subject,
//     and an instance's user cannot publish on cx.ha.gw.* or cx.ha.obs.*
//     (the server refuses: Permissions Violation).
func TestFleetGatewayUserPermissions(t *testing.T) {
	block := docGatewayUser(t)
	dir := t.TempDir()
	port, mon := freePort(t), freePort(t)
	conf := fmt.Sprintf(`listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream { store_dir: %q }
accounts {
  APP {
    jetstream: enabled
    users = [
      { user: app1, password: pw-app1, permissions: { publish: { allow: ["cx.ha.hb.app1"] }, subscribe: { allow: ["cx.ha.discover"] } } }
      { user: app2, password: pw-app2, permissions: { publish: { allow: ["cx.ha.hb.app2"] }, subscribe: { allow: ["cx.ha.discover"] } } }
%s
%s
    ]
  }
}
`, port, mon, filepath.Join(dir, "js"), block, strings.NewReplacer("gw-a", "gw-b", "GW_A", "GW_B").Replace(block))
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &natsServer{Port: port, URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	n.proc = newProc(t, "nats-perms", bins.nats, "-c", confPath)
	n.env = []string{"CX_GW_A_PASSWORD=pw-gw-a", "CX_GW_B_PASSWORD=pw-gw-b"}
	n.Restart()

	userURL := func(user string) string { return fmt.Sprintf("nats://%s:pw-%s@127.0.0.1:%d", user, user, port) }
	startBackend(t, "app1", userURL("app1"), 0)
	startBackend(t, "app2", userURL("app2"), 1)
	var gws []*fleetGateway
	for _, id := range []string{"gw-a", "gw-b"} {
		cf := fmt.Sprintf(`{
	admin %s
	cx {
		nats %s
		user %s pw-%s
		gateway_id %s
	}
}

http://%s {
	cx_proxy {
		stale_after 1s
	}
}
`, AdminAddr, n.URL, id, id, id, SiteAddr)
		gws = append(gws, &fleetGateway{ID: id, gateway: startGatewayNamed(t, id, bins.caddy, cf)})
	}
	waitFleetActive(t, gws, 15*time.Second)
	waitAllRouteTo(t, gws, 10*time.Second, "app1")
	waitFleetControl(t, gws, 15*time.Second)

	_, drained := gws[0].mustControl(t, "app1", "drain")
	waitAllRouteTo(t, gws, 5*time.Second, "app2")
	t.Logf("drain through gw-a -> gw-b routes to app2: %s", ms(time.Since(drained)))
	gws[1].mustControl(t, "app1", "ready")
	waitAllRouteTo(t, gws, 5*time.Second, "app1")

	for _, c := range []struct{ user, subject string }{
		{"gw-a", "cx.ha.gw.gw-b"},
		{"gw-a", "cx.ha.obs.gw-b"},
		{"app1", "cx.ha.gw.app1"},
		{"app1", "cx.ha.obs.app1"},
		{"app1", "$KV.cx_control.cx.ha.app2"},
	} {
		if err := publishRefused(t, userURL(c.user), c.subject); err != nil {
			t.Errorf("user %s publishing %s: %v", c.user, c.subject, err)
		}
	}
}

// docGatewayUser returns the per-gateway user block of
// docs/nats-permissions.md: the code block after "Per gateway user:".
func docGatewayUser(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile("../docs/nats-permissions.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "Per gateway user:\n\n```\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 || !strings.Contains(block, "user: gw-a") {
		t.Fatal(`docs/nats-permissions.md has no code block after "Per gateway user:" with user gw-a`)
	}
	return block
}

// publishRefused publishes on subject as the user of url and returns nil
// if the server answers with a permissions violation for it.
func publishRefused(t testing.TB, url, subject string) error {
	t.Helper()
	var mu sync.Mutex
	var errs []string
	nc, err := nats.Connect(url, nats.MaxReconnects(0), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		mu.Lock()
		errs = append(errs, err.Error())
		mu.Unlock()
	}))
	if err != nil {
		return fmt.Errorf("connect: %v", err)
	}
	defer nc.Close()
	if err := nc.Publish(subject, []byte(`{"proto":1}`)); err != nil {
		return fmt.Errorf("publish: %v", err)
	}
	_ = nc.Flush()
	if poll(2*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range errs {
			if strings.Contains(e, "Permissions Violation") && strings.Contains(e, strconv.Quote(subject)) {
				return true
			}
		}
		return false
	}) {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	return fmt.Errorf("the server did not refuse it (errors: %q)", errs)
}

// TestFleetShippedPermissions runs two gateways with the shared `gateway`
// user of deploy/nats/permissions.conf as shipped (only its port changed,
// and a JetStream store added) and the instances with their own users:
// the gateways must see each other (their heartbeats on cx.ha.gw.*), share
// a failure (cx.ha.obs.*) and apply a drain made through the other (the
// control bucket), as they do without permissions.
func TestFleetShippedPermissions(t *testing.T) {
	data, err := os.ReadFile("../deploy/nats/permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	conf := strings.Replace(string(data), "port: 4222", fmt.Sprintf("listen: 127.0.0.1:%d\njetstream { store_dir: %q }", port, filepath.Join(dir, "js")), 1)
	if conf == string(data) {
		t.Fatal("deploy/nats/permissions.conf has no `port: 4222` line to replace")
	}
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &natsServer{Port: port, URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	n.proc = newProc(t, "nats-shipped", bins.nats, "-c", confPath)
	n.env = []string{"CX_APP1_PASSWORD=pw-app1", "CX_APP2_PASSWORD=pw-app2", "CX_GATEWAY_PASSWORD=pw-gateway", "CX_APP_PASSWORD=pw-app"}
	n.Restart()

	userURL := func(user string) string { return fmt.Sprintf("nats://%s:pw-%s@127.0.0.1:%d", user, user, port) }
	app1 := startBackend(t, "app1", userURL("app1"), 0)
	startBackend(t, "app2", userURL("app2"), 1)
	var gws []*fleetGateway
	for i, id := range []string{"gw-a", "gw-b"} {
		site := ""
		if i == 0 {
			site = "\n\trequest_header X-Via-Gw-A 1"
		}
		cf := fmt.Sprintf(`{
	admin %s
	cx {
		nats %s
		user gateway pw-gateway
		gateway_id %s
	}
}

http://%s {
	cx_proxy {
		stale_after 1s
		fail_timeout 3s
	}%s
}
`, AdminAddr, n.URL, id, SiteAddr, site)
		gws = append(gws, &fleetGateway{ID: id, gateway: startGatewayNamed(t, id, bins.caddy, cf)})
	}
	waitAllRouteTo(t, gws, 10*time.Second, "app1")
	waitFleetActive(t, gws, 10*time.Second)
	waitFleetControl(t, gws, 15*time.Second)

	gws[0].mustControl(t, "app1", "drain")
	waitAllRouteTo(t, gws, 5*time.Second, "app2")
	gws[1].mustControl(t, "app1", "ready")
	waitAllRouteTo(t, gws, 5*time.Second, "app1")

	// A failure only gw-a sees: gw-b passes over app1 too.
	app1.failFor(t, time.Second, 502, "X-Via-Gw-A")
	waitFor(t, 5*time.Second, "gw-a to send a request to app1", func() bool {
		_, _, err := get(&http.Client{Timeout: 2 * time.Second}, gws[0].URL+"/")
		rec, ferr := app1.failed()
		return err == nil && ferr == nil && rec.Count > 0
	})
	waitFor(t, 2*time.Second, "gw-b to pass over app1 after gw-a's failure", func() bool {
		in, err := gws[1].instance("app1")
		return err == nil && in != nil && in.Failing
	})
}
