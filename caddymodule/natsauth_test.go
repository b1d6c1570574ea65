package caddymodule

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// secureNATS starts a NATS server with opts (host and port filled in).
func secureNATS(t testing.TB, opts *server.Options) string {
	t.Helper()
	return natstest.Start(t, opts).ClientURL()
}

// routedThrough starts a gateway with the cx block and checks that an
// instance announced with the publisher options gets traffic.
func routedThrough(t *testing.T, cxBlock, natsURL string, pubOpts ...nats.Option) {
	t.Helper()
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n%s\n\t}\n}\nhttp://127.0.0.1:%d {\n\tcx_proxy\n}\n", cxBlock, port))
	t.Cleanup(func() { _ = caddy.Stop() })
	nc, err := nats.Connect(natsURL, pubOpts...)
	if err != nil {
		t.Fatalf("instance cannot connect: %v", err)
	}
	t.Cleanup(nc.Close)
	app := startBackend(t, "app1")
	pub, err := heartbeat.NewPublisher(nc, heartbeat.Config{ID: "app1", URL: app.url, Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Stop)
	servedBy(t, fmt.Sprintf("http://127.0.0.1:%d", port), "app1", 5*time.Second)
}

func TestNATSUserPassword(t *testing.T) {
	url := secureNATS(t, &server.Options{Username: "gw", Password: "s3cret"})
	routedThrough(t, "\t\tnats "+url+"\n\t\tuser gw s3cret", url, nats.UserInfo("gw", "s3cret"))
}

func TestNATSToken(t *testing.T) {
	url := secureNATS(t, &server.Options{Authorization: "t0ken"})
	routedThrough(t, "\t\tnats "+url+"\n\t\ttoken t0ken", url, nats.Token("t0ken"))
}

func TestNATSNkey(t *testing.T) {
	gw, _ := nkeys.CreateUser()
	inst, _ := nkeys.CreateUser()
	gwPub, _ := gw.PublicKey()
	instPub, _ := inst.PublicKey()
	url := secureNATS(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: gwPub}, {Nkey: instPub}}})
	seed, _ := gw.Seed()
	seedFile := natstest.WriteFile(t, "gw.nk", seed)
	instSeed, _ := inst.Seed()
	instOpt, err := nats.NkeyOptionFromSeed(natstest.WriteFile(t, "inst.nk", instSeed))
	if err != nil {
		t.Fatal(err)
	}
	routedThrough(t, "\t\tnats "+url+"\n\t\tnkey "+seedFile, url, instOpt)
}

func TestNATSJWTCredentials(t *testing.T) {
	op := natstest.NewOperator(t)
	url := secureNATS(t, op.Options())
	routedThrough(t, "\t\tnats "+url+"\n\t\tcredentials "+op.Creds(t, "gw.creds"), url, nats.UserCredentials(op.Creds(t, "inst.creds")))
}

func TestNATSMutualTLSWithPrivateCA(t *testing.T) {
	pki := natstest.NewPKI(t)
	url := secureNATS(t, pki.MutualTLS(t))
	block := fmt.Sprintf("\t\tnats %s\n\t\ttls {\n\t\t\tca %s\n\t\t\tcert %s %s\n\t\t}", url, pki.CA, pki.ClientCert, pki.ClientKey)
	routedThrough(t, block, url, nats.RootCAs(pki.CA), nats.ClientCert(pki.ClientCert, pki.ClientKey))
}

// TestLeastPrivilegePermissions runs the documented permission set: the
// gateway may only subscribe to heartbeats and publish discover; an
// instance may only publish its own heartbeats and subscribe to discover.
func TestLeastPrivilegePermissions(t *testing.T) {
	gateway := &server.User{Username: "gateway", Password: "g", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"cx.ha.discover"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"cx.ha.hb.*"}},
	}}
	instance := &server.User{Username: "app1", Password: "a", Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"cx.ha.hb.app1"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"cx.ha.discover"}},
	}}
	url := secureNATS(t, &server.Options{Users: []*server.User{gateway, instance}})
	violations := make(chan error, 10)
	routedThrough(t, "\t\tnats "+url+"\n\t\tuser gateway g", url, nats.UserInfo("app1", "a"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	select {
	case err := <-violations:
		t.Fatalf("the documented permissions are not enough for an instance: %v", err)
	default:
	}

	// The instance user cannot impersonate another instance or a gateway.
	nc, err := nats.Connect(url, nats.UserInfo("app1", "a"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, subject := range []string{"cx.ha.hb.app2", "cx.ha.discover"} {
		_ = nc.Publish(subject, []byte("{}"))
		select {
		case err := <-violations:
			if !errorContains(err, "Permissions Violation") {
				t.Fatalf("publishing %s: %v, want a permissions violation", subject, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("publishing %s as an instance was allowed", subject)
		}
	}
}

func errorContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
