package caddymodule

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/jwt/v2"
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
	seedFile := writeFile(t, "gw.nk", seed)
	instSeed, _ := inst.Seed()
	instOpt, err := nats.NkeyOptionFromSeed(writeFile(t, "inst.nk", instSeed))
	if err != nil {
		t.Fatal(err)
	}
	routedThrough(t, "\t\tnats "+url+"\n\t\tnkey "+seedFile, url, instOpt)
}

func TestNATSJWTCredentials(t *testing.T) {
	operator, _ := nkeys.CreateOperator()
	opPub, _ := operator.PublicKey()
	opClaims := jwt.NewOperatorClaims(opPub)
	account, _ := nkeys.CreateAccount()
	accPub, _ := account.PublicKey()
	accJWT, err := jwt.NewAccountClaims(accPub).Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(accPub, accJWT); err != nil {
		t.Fatal(err)
	}
	url := secureNATS(t, &server.Options{TrustedOperators: []*jwt.OperatorClaims{opClaims}, AccountResolver: resolver})
	creds := func(name string) string {
		user, _ := nkeys.CreateUser()
		userPub, _ := user.PublicKey()
		userJWT, err := jwt.NewUserClaims(userPub).Encode(account)
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := user.Seed()
		file, err := jwt.FormatUserConfig(userJWT, seed)
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, name, file)
	}
	routedThrough(t, "\t\tnats "+url+"\n\t\tcredentials "+creds("gw.creds"), url, nats.UserCredentials(creds("inst.creds")))
}

func TestNATSMutualTLSWithPrivateCA(t *testing.T) {
	pki := newTestPKI(t)
	tlsConfig, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: pki.serverCert, KeyFile: pki.serverKey, CaFile: pki.caFile, Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	url := secureNATS(t, &server.Options{TLSConfig: tlsConfig, TLSVerify: true, TLS: true})
	block := fmt.Sprintf("\t\tnats %s\n\t\ttls {\n\t\t\tca %s\n\t\t\tcert %s %s\n\t\t}", url, pki.caFile, pki.clientCert, pki.clientKey)
	routedThrough(t, block, url, nats.RootCAs(pki.caFile), nats.ClientCert(pki.clientCert, pki.clientKey))
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type testPKI struct{ caFile, serverCert, serverKey, clientCert, clientKey string }

// newTestPKI makes a private CA with a server certificate for 127.0.0.1
// and a client certificate.
func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "caddy-cx test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(name string, usage x509.ExtKeyUsage, serial int64) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return writeFile(t, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			writeFile(t, name+"-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	}
	p := testPKI{caFile: writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))}
	p.serverCert, p.serverKey = issue("server", x509.ExtKeyUsageServerAuth, 2)
	p.clientCert, p.clientKey = issue("client", x509.ExtKeyUsageClientAuth, 3)
	return p
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
