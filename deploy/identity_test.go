package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// operatorSetup is the decentralized (JWT) form of deploy/nats/permissions.conf,
// built as docs/nats-permissions.md tells nsc to: an operator, one account,
// and in it one scoped signing key per role. The instance role's template
// permission `cx.ha.hb.{{name()}}` is what lets an operator issue a user per
// instance without touching the server's configuration.
type operatorSetup struct {
	operator *jwt.OperatorClaims
	account  nkeys.KeyPair
	accJWT   string
	roles    map[string]nkeys.KeyPair // role name -> scoped signing key
}

// roleTemplates are the scoped signing keys' permission templates, as the
// `nsc edit signing-key` lines of docs/nats-permissions.md set them.
var roleTemplates = map[string]struct{ pub, sub, pubDeny, subDeny []string }{
	"instance": {pub: []string{"cx.ha.hb.{{name()}}"}, sub: []string{"cx.ha.discover"}},
	"gateway": {pub: []string{"cx.ha.discover", "cx.ha.gw.*", "cx.ha.obs.*"},
		sub: []string{"cx.ha.hb.*", "cx.ha.gw.*", "cx.ha.obs.*", "_INBOX.>"}},
	"app": {pub: []string{">"}, sub: []string{">"}, pubDeny: []string{"cx.ha.>"}, subDeny: []string{"cx.ha.>"}},
}

func newOperatorSetup(t *testing.T) *operatorSetup {
	t.Helper()
	okp := must(t, nkeys.CreateOperator)
	oc := jwt.NewOperatorClaims(pub(t, okp))
	oc.Name = "cx"
	// The operator JWT is self-signed; the server only needs its claims.
	if _, err := oc.Encode(okp); err != nil {
		t.Fatal(err)
	}

	akp := must(t, nkeys.CreateAccount)
	ac := jwt.NewAccountClaims(pub(t, akp))
	ac.Name = "APP"
	roles := map[string]nkeys.KeyPair{}
	for role, tmpl := range roleTemplates {
		sk := must(t, nkeys.CreateAccount)
		scope := jwt.NewUserScope()
		scope.Key, scope.Role = pub(t, sk), role
		scope.Template.Pub.Allow.Add(tmpl.pub...)
		scope.Template.Sub.Allow.Add(tmpl.sub...)
		scope.Template.Pub.Deny.Add(tmpl.pubDeny...)
		scope.Template.Sub.Deny.Add(tmpl.subDeny...)
		ac.SigningKeys.AddScopedSigner(scope)
		roles[role] = sk
	}
	accJWT, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	return &operatorSetup{operator: oc, account: akp, accJWT: accJWT, roles: roles}
}

// start runs a real nats-server in operator mode that trusts the operator
// and knows the account (a memory resolver: no nsc push needed).
func (o *operatorSetup) start(t *testing.T) *server.Server {
	t.Helper()
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(pub(t, o.account), o.accJWT); err != nil {
		t.Fatal(err)
	}
	return natstest.Start(t, &server.Options{
		TrustedOperators: []*jwt.OperatorClaims{o.operator},
		AccountResolver:  resolver,
	})
}

// user issues a user JWT named name with role's scoped signing key, as
// `nsc add user --name NAME -K ROLE` does: the JWT carries no permissions
// of its own; the server applies the role's template at connect.
func (o *operatorSetup) user(t *testing.T, role, name string) nats.Option {
	t.Helper()
	ukp := must(t, nkeys.CreateUser)
	uc := jwt.NewUserClaims(pub(t, ukp))
	uc.Name = name
	uc.IssuerAccount = pub(t, o.account)
	uc.SetScoped(true)
	userJWT, err := uc.Encode(o.roles[role])
	if err != nil {
		t.Fatal(err)
	}
	seed, err := ukp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	// The .creds file `nsc generate creds` writes, which `credentials FILE`
	// and the sidecar's `--credentials` read.
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), name+".creds")
	if err := os.WriteFile(file, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return nats.UserCredentials(file)
}

// TestNATSScopedSigningKeyTemplate runs the same proof as
// TestNATSPermissions against the JWT form: users app1 and app2 issued by
// the one "instance" scoped signing key each publish only their own
// heartbeat subject, because the server expands `cx.ha.hb.{{name()}}` with
// the user's name.
func TestNATSScopedSigningKeyTemplate(t *testing.T) {
	o := newOperatorSetup(t)
	s := o.start(t)
	provePermissions(t, parties{
		app1:    connect(t, s, "app1", o.user(t, "instance", "app1")),
		app2:    connect(t, s, "app2", o.user(t, "instance", "app2")),
		gateway: connect(t, s, "gateway", o.user(t, "gateway", "gateway-1")),
		app:     connect(t, s, "app", o.user(t, "app", "reports")),
	})
}

// TestNATSScopedUserAddedLater: a new instance needs only a new user JWT
// from the same signing key, issued while the server runs; its own
// subject works at once and it cannot announce an existing id.
func TestNATSScopedUserAddedLater(t *testing.T) {
	o := newOperatorSetup(t)
	s := o.start(t)
	gw := connect(t, s, "gateway", o.user(t, "gateway", "gateway-1"))
	heartbeats := gw.subscribe(t, "cx.ha.hb.*")

	app3 := connect(t, s, "app3", o.user(t, "instance", "app3"))
	app3.refused(t, "instance app3", "cx.ha.hb.app1")
	app3.publish(t, "cx.ha.hb.app3", "from app3")
	if m := next(t, heartbeats, "app3's heartbeat"); m.Subject != "cx.ha.hb.app3" || string(m.Data) != "from app3" {
		t.Errorf("gateway got %q on %s, want app3's own heartbeat", m.Data, m.Subject)
	}
}

// TestNATSScopedGatewaysFleet: gateways signed with the gateway role hear
// each other's heartbeats and observations; instances may publish
// neither, so they cannot pose as a gateway.
func TestNATSScopedGatewaysFleet(t *testing.T) {
	o := newOperatorSetup(t)
	s := o.start(t)
	gw1 := connect(t, s, "gateway-1", o.user(t, "gateway", "gateway-1"))
	gw2 := connect(t, s, "gateway-2", o.user(t, "gateway", "gateway-2"))
	fleet := gw2.subscribe(t, "cx.ha.gw.*")
	shared := gw2.subscribe(t, "cx.ha.obs.*")
	app1 := connect(t, s, "app1", o.user(t, "instance", "app1"))
	app1.refused(t, "instance app1", "cx.ha.gw.gw1")
	app1.refused(t, "instance app1", "cx.ha.obs.gw1")
	gw1.publish(t, "cx.ha.gw.gw1", "heartbeat")
	gw1.publish(t, "cx.ha.obs.gw1", "observation")
	if m := next(t, fleet, "gw1's heartbeat"); m.Subject != "cx.ha.gw.gw1" || string(m.Data) != "heartbeat" {
		t.Errorf("gateway-2 got %q on %s, want gw1's heartbeat", m.Data, m.Subject)
	}
	if m := next(t, shared, "gw1's observation"); m.Subject != "cx.ha.obs.gw1" || string(m.Data) != "observation" {
		t.Errorf("gateway-2 got %q on %s, want gw1's observation", m.Data, m.Subject)
	}
}

// TestNATSUnscopedUserRefused: a user JWT signed by a key the account does
// not list is refused at connect, so instance credentials cannot be minted
// without the signing key.
func TestNATSUnscopedUserRefused(t *testing.T) {
	o := newOperatorSetup(t)
	s := o.start(t)
	stranger := must(t, nkeys.CreateAccount)
	o.roles["stranger"] = stranger
	_, err := nats.Connect(s.ClientURL(), o.user(t, "stranger", "app1"))
	if err == nil {
		t.Fatal("a user signed by an unknown key connected")
	}
}

func must(t *testing.T, create func() (nkeys.KeyPair, error)) nkeys.KeyPair {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func pub(t *testing.T, kp nkeys.KeyPair) string {
	t.Helper()
	p, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNATSTemplateNameMustBeAnID is why docs/nats-permissions.md says to
// name instance users with their id only: the template is text
// substitution, so a user named `*` issued with the instance key may
// publish any id's heartbeat. The signing key's holder decides names.
func TestNATSTemplateNameMustBeAnID(t *testing.T) {
	o := newOperatorSetup(t)
	s := o.start(t)
	gw := connect(t, s, "gateway", o.user(t, "gateway", "gateway-1"))
	heartbeats := gw.subscribe(t, "cx.ha.hb.*")
	wild := connect(t, s, "*", o.user(t, "instance", "*"))
	wild.publish(t, "cx.ha.hb.app2", "as app2")
	if m := next(t, heartbeats, "the wildcard user's heartbeat"); m.Subject != "cx.ha.hb.app2" {
		t.Errorf("gateway got %s, want the forged cx.ha.hb.app2", m.Subject)
	}
}

// TestDocsShowTheTestedTemplates: the nsc lines of docs/nats-permissions.md
// set the roles and templates the tests above prove.
func TestDocsShowTheTestedTemplates(t *testing.T) {
	doc := read(t, "../docs/nats-permissions.md")
	lines := map[string]string{
		"instance": `--role instance \` + "\n" + `  --allow-pub 'cx.ha.hb.{{name()}}' --allow-sub cx.ha.discover`,
		"gateway": `--role gateway \` + "\n" + `  --allow-pub cx.ha.discover --allow-sub 'cx.ha.hb.*' \` + "\n" +
			`  --allow-pubsub 'cx.ha.gw.*' --allow-pubsub 'cx.ha.obs.*' --allow-sub '_INBOX.>'`,
		"app": `--role app \` + "\n" + `  --allow-pubsub '>' --deny-pubsub 'cx.ha.>'`,
	}
	for role, line := range lines {
		if _, tested := roleTemplates[role]; !tested || !strings.Contains(doc, line) {
			t.Errorf("docs/nats-permissions.md does not set role %s as tested:\n%s", role, line)
		}
	}
	if len(lines) != len(roleTemplates) {
		t.Errorf("tested roles %d, documented %d", len(roleTemplates), len(lines))
	}
}
