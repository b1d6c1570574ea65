package deploy

import (
	"os"
	"slices"
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

// connectAs connects as user with a password.
func connectAs(t *testing.T, s *server.Server, user, password string) *client {
	t.Helper()
	return connect(t, s, user, nats.UserInfo(user, password))
}

// connect connects with auth, collecting the server's asynchronous errors.
func connect(t *testing.T, s *server.Server, who string, auth nats.Option) *client {
	t.Helper()
	c := &client{errs: make(chan error, 16)}
	nc, err := nats.Connect(s.ClientURL(), auth,
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { c.errs <- err }))
	if err != nil {
		t.Fatalf("connect as %s: %v", who, err)
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
	c.violation(t, who+" publishing", subject)
}

// subRefused subscribes and expects the server's permissions violation.
func (c *client) subRefused(t *testing.T, who, subject string) {
	t.Helper()
	c.subscribe(t, subject)
	c.violation(t, who+" subscribing to", subject)
}

func (c *client) violation(t *testing.T, what, subject string) {
	t.Helper()
	select {
	case err := <-c.errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") || !strings.Contains(err.Error(), subject) {
			t.Errorf("%s %s: error %v, want a permissions violation", what, subject, err)
		}
	case <-time.After(wait):
		t.Errorf("%s %s was allowed", what, subject)
	}
}

// next returns the next message on ch.
func next(t *testing.T, ch chan *nats.Msg, what string) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(wait):
		t.Fatalf("no message: %s", what)
		return nil
	}
}

// parties are the connections the permission proof needs: two instances
// (ids app1 and app2), a gateway and the application's own user.
type parties struct {
	app1, app2, gateway, app *client
}

// provePermissions is the proof both forms of the permissions must pass:
// an instance publishes its own heartbeats and hears discovers, and nothing
// else: not another id's heartbeat, not discover, not the others'
// heartbeats. A gateway publishes discover and hears heartbeats; the
// application's own user touches nothing under cx.ha.>. A refused message
// never arrives: the next message a subscriber gets is the one sent after.
func provePermissions(t *testing.T, p parties) {
	t.Helper()
	discovers := p.app1.subscribe(t, "cx.ha.discover")
	heartbeats := p.gateway.subscribe(t, "cx.ha.hb.*")

	p.app1.refused(t, "instance app1", "cx.ha.discover")
	p.gateway.publish(t, "cx.ha.discover", "from the gateway")
	if got := string(next(t, discovers, "discover").Data); got != "from the gateway" {
		t.Errorf("instance got discover %q, want the gateway's", got)
	}

	// The forgeries: app1 as app2, app2 as app1, and anyone else as either.
	p.app1.refused(t, "instance app1", "cx.ha.hb.app2")
	p.app2.refused(t, "instance app2", "cx.ha.hb.app1")
	p.app1.refused(t, "instance app1", "cx.ha.hb.app3")
	p.gateway.refused(t, "a gateway", "cx.ha.hb.app1")
	p.app.refused(t, "the application's own user", "cx.ha.hb.app1")
	p.app.refused(t, "the application's own user", "cx.ha.discover")
	for _, own := range []struct {
		c  *client
		id string
	}{{p.app1, "app1"}, {p.app2, "app2"}} {
		subject := "cx.ha.hb." + own.id
		own.c.publish(t, subject, "from "+own.id)
		m := next(t, heartbeats, "heartbeat of "+own.id)
		if m.Subject != subject || string(m.Data) != "from "+own.id {
			t.Errorf("gateway got %q on %s, want %s's own heartbeat", m.Data, m.Subject, own.id)
		}
	}

	p.app1.subRefused(t, "instance app1", "cx.ha.hb.*")
	p.app.subRefused(t, "the application's own user", "cx.ha.>")
	p.gateway.subRefused(t, "a gateway", "reports.progress")

	appCh := p.app.subscribe(t, "reports.progress")
	p.app.publish(t, "reports.progress", "42%")
	if got := string(next(t, appCh, "application traffic").Data); got != "42%" {
		t.Errorf("application traffic: %q", got)
	}
	select {
	case m := <-heartbeats:
		t.Errorf("gateway got a heartbeat nobody may send: %q on %s", m.Data, m.Subject)
	default:
	}
}

// staticPasswords are the passwords deploy/nats/permissions.conf reads from
// the environment.
var staticPasswords = map[string]string{
	"CX_APP1_PASSWORD":    "app1-pw",
	"CX_APP2_PASSWORD":    "app2-pw",
	"CX_GATEWAY_PASSWORD": "gateway-pw",
	"CX_APP_PASSWORD":     "app-pw",
}

func setStaticPasswords(t *testing.T) {
	for k, v := range staticPasswords {
		t.Setenv(k, v)
	}
}

// TestNATSPermissions starts nats-server with the shipped
// deploy/nats/permissions.conf and runs the proof: instance app1 can
// publish cx.ha.hb.app1 but not cx.ha.hb.app2.
func TestNATSPermissions(t *testing.T) {
	setStaticPasswords(t)
	s := startConfigured(t, "nats/permissions.conf")
	provePermissions(t, parties{
		app1:    connectAs(t, s, "app1", "app1-pw"),
		app2:    connectAs(t, s, "app2", "app2-pw"),
		gateway: connectAs(t, s, "gateway", "gateway-pw"),
		app:     connectAs(t, s, "app", "app-pw"),
	})
}

// TestNATSPermissionsNeedPasswords: without its passwords in the
// environment the server does not start (no user with an empty password).
func TestNATSPermissionsNeedPasswords(t *testing.T) {
	setStaticPasswords(t)
	if err := os.Unsetenv("CX_APP2_PASSWORD"); err != nil {
		t.Fatal(err)
	}
	if _, err := server.ProcessConfigFile("nats/permissions.conf"); err == nil || !strings.Contains(err.Error(), "CX_APP2_PASSWORD") {
		t.Errorf("permissions.conf without CX_APP2_PASSWORD: %v, want an error naming it", err)
	}
}

// TestNATSInstanceUsers checks the rule docs/nats-permissions.md gives for
// adding an instance, on every user of the shipped file: a user allowed to
// publish a heartbeat subject is an instance, may publish exactly
// cx.ha.hb.<its user name> and subscribe only to cx.ha.discover.
func TestNATSInstanceUsers(t *testing.T) {
	users := natsUsers(t)
	var instances []string
	for name, perms := range users {
		if !slices.ContainsFunc(perms.Publish.Allow, func(s string) bool { return strings.HasPrefix(s, "cx.ha.hb.") }) {
			continue
		}
		instances = append(instances, name)
		if !slices.Equal(perms.Publish.Allow, []string{"cx.ha.hb." + name}) || len(perms.Publish.Deny) != 0 {
			t.Errorf("instance user %s may publish %v (deny %v), want only cx.ha.hb.%s", name, perms.Publish.Allow, perms.Publish.Deny, name)
		}
		if !slices.Equal(perms.Subscribe.Allow, []string{"cx.ha.discover"}) {
			t.Errorf("instance user %s may subscribe to %v, want only cx.ha.discover", name, perms.Subscribe.Allow)
		}
	}
	slices.Sort(instances)
	if !slices.Equal(instances, []string{"app1", "app2"}) {
		t.Errorf("instance users %v, want app1 and app2", instances)
	}
}

// natsUsers returns the users of the shipped permissions file and their
// permissions; every user has permissions.
func natsUsers(t *testing.T) map[string]*server.Permissions {
	t.Helper()
	setStaticPasswords(t)
	opts, err := server.ProcessConfigFile("nats/permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]*server.Permissions{}
	for _, u := range opts.Users {
		if u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil {
			t.Fatalf("user %s has no publish or subscribe permissions: it could do anything", u.Username)
		}
		users[u.Username] = u.Permissions
	}
	return users
}

// TestNATSClusterConfig checks the cluster node configuration parses as
// documented: one cluster, the three routes, monitoring on.
func TestNATSClusterConfig(t *testing.T) {
	t.Setenv("NATS_SERVER_NAME", "nats-1")
	opts, err := server.ProcessConfigFile("nats/cluster.conf")
	if err != nil {
		t.Fatal(err)
	}
	if opts.ServerName != "nats-1" || opts.Cluster.Name != "cx" || opts.Cluster.Port != 6222 || len(opts.Routes) != 3 || opts.HTTPPort != 8222 ||
		!opts.JetStream || opts.StoreDir == "" {
		t.Errorf("cluster config: name %q cluster %q port %d routes %v http %d jetstream %v (store %q)",
			opts.ServerName, opts.Cluster.Name, opts.Cluster.Port, opts.Routes, opts.HTTPPort, opts.JetStream, opts.StoreDir)
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
