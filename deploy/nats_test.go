package deploy

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

const wait = 5 * time.Second

// startConfigured runs a real NATS server from a configuration file, on a
// free port.
func startConfigured(t *testing.T, file string) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	opts.Port, opts.HTTPPort = -1, 0
	return natstest.Start(t, opts)
}

// client is a connection as one user, with its permission errors.
type client struct {
	*nats.Conn
	errs chan error
}

func connectAs(t *testing.T, s *server.Server, user, password string) *client {
	t.Helper()
	c := &client{errs: make(chan error, 16)}
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, password),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { c.errs <- err }))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	c.Conn = nc
	return c
}

func (c *client) subscribe(t *testing.T, subject string) chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 16)
	if _, err := c.ChanSubscribe(subject, ch); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

// publish publishes and waits until the server processed it.
func (c *client) publish(t *testing.T, subject, data string) {
	t.Helper()
	if err := c.Publish(subject, []byte(data)); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// refused publishes and expects the server's permissions violation.
func (c *client) refused(t *testing.T, who, subject string) {
	t.Helper()
	c.publish(t, subject, "forged")
	select {
	case err := <-c.errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") || !strings.Contains(err.Error(), subject) {
			t.Errorf("%s publishing %s: error %v, want a permissions violation", who, subject, err)
		}
	case <-time.After(wait):
		t.Errorf("%s could publish on %s", who, subject)
	}
}

// next returns the next message on ch.
func next(t *testing.T, ch chan *nats.Msg, what string) string {
	t.Helper()
	select {
	case m := <-ch:
		return string(m.Data)
	case <-time.After(wait):
		t.Fatalf("no message: %s", what)
		return ""
	}
}

// TestNATSPermissions starts nats-server with deploy/nats/permissions.conf:
// instances publish heartbeats and hear discovers, gateways the reverse,
// and nobody can do the other's part. A refused message never arrives:
// the next message a subscriber gets is the one sent after it.
func TestNATSPermissions(t *testing.T) {
	t.Setenv("CX_INSTANCE_PASSWORD", "instance-pw")
	t.Setenv("CX_GATEWAY_PASSWORD", "gateway-pw")
	t.Setenv("CX_APP_PASSWORD", "app-pw")
	s := startConfigured(t, "nats/permissions.conf")
	inst := connectAs(t, s, "instance", "instance-pw")
	gw := connectAs(t, s, "gateway", "gateway-pw")
	app := connectAs(t, s, "app", "app-pw")
	discovers := inst.subscribe(t, "cx.ha.discover")
	heartbeats := gw.subscribe(t, "cx.ha.hb.*")

	inst.refused(t, "an instance", "cx.ha.discover")
	gw.publish(t, "cx.ha.discover", "from the gateway")
	if got := next(t, discovers, "discover"); got != "from the gateway" {
		t.Errorf("instance got discover %q, want the gateway's", got)
	}

	gw.refused(t, "a gateway", "cx.ha.hb.app1")
	app.refused(t, "the application's own user", "cx.ha.hb.app1")
	inst.publish(t, "cx.ha.hb.app1", "from the instance")
	if got := next(t, heartbeats, "heartbeat"); got != "from the instance" {
		t.Errorf("gateway got heartbeat %q, want the instance's", got)
	}

	appCh := app.subscribe(t, "reports.progress")
	app.publish(t, "reports.progress", "42%")
	if got := next(t, appCh, "application traffic"); got != "42%" {
		t.Errorf("application traffic: %q", got)
	}
}

// TestNATSClusterConfig checks the cluster node configuration parses as
// documented: one cluster, the three routes, monitoring on.
func TestNATSClusterConfig(t *testing.T) {
	t.Setenv("NATS_SERVER_NAME", "nats-1")
	opts, err := server.ProcessConfigFile("nats/cluster.conf")
	if err != nil {
		t.Fatal(err)
	}
	if opts.ServerName != "nats-1" || opts.Cluster.Name != "cx" || opts.Cluster.Port != 6222 || len(opts.Routes) != 3 || opts.HTTPPort != 8222 {
		t.Errorf("cluster config: name %q cluster %q port %d routes %v http %d",
			opts.ServerName, opts.Cluster.Name, opts.Cluster.Port, opts.Routes, opts.HTTPPort)
	}
}

// TestDocsShowTheConfigs: the docs show the tested files, verbatim.
func TestDocsShowTheConfigs(t *testing.T) {
	for doc, files := range map[string][]string{
		"../docs/nats-permissions.md": {"nats/permissions.conf"},
		"../docs/nats-cluster.md":     {"nats/cluster.conf"},
	} {
		text := read(t, doc)
		for _, f := range files {
			if !strings.Contains(text, read(t, f)) {
				t.Errorf("%s does not show %s as it is", doc, f)
			}
		}
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
