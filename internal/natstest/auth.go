package natstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// WriteFile writes data to a new file named name in a temporary directory
// of the test, readable by its owner only (keys, credentials), and
// returns its path.
func WriteFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// PKI is a private CA with a server certificate for 127.0.0.1 and a client
// certificate, as PEM files.
type PKI struct{ CA, ServerCert, ServerKey, ClientCert, ClientKey string }

// NewPKI makes a PKI valid for an hour around now.
func NewPKI(t testing.TB) PKI {
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
		return WriteFile(t, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			WriteFile(t, name+"-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	}
	p := PKI{CA: WriteFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))}
	p.ServerCert, p.ServerKey = issue("server", x509.ExtKeyUsageServerAuth, 2)
	p.ClientCert, p.ClientKey = issue("client", x509.ExtKeyUsageClientAuth, 3)
	return p
}

// MutualTLS is the server options that require a client certificate of
// the PKI's CA.
func (p PKI) MutualTLS(t testing.TB) *server.Options {
	t.Helper()
	tlsConfig, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: p.ServerCert, KeyFile: p.ServerKey, CaFile: p.CA, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	return &server.Options{TLSConfig: tlsConfig, TLSVerify: true, TLS: true}
}

// Operator is a decentralized-auth (JWT) setup: an operator, one account,
// and users of it issued on demand.
type Operator struct {
	claims   *jwt.OperatorClaims
	account  nkeys.KeyPair
	resolver *server.MemAccResolver
}

// NewOperator makes an operator with one account.
func NewOperator(t testing.TB) *Operator {
	t.Helper()
	operator, _ := nkeys.CreateOperator()
	opPub, _ := operator.PublicKey()
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
	return &Operator{claims: jwt.NewOperatorClaims(opPub), account: account, resolver: resolver}
}

// Options is the server options that trust the operator.
func (o *Operator) Options() *server.Options {
	return &server.Options{TrustedOperators: []*jwt.OperatorClaims{o.claims}, AccountResolver: o.resolver}
}

// Creds issues a user of the account and writes its .creds file (user JWT
// and nkey seed) named name; it returns the file's path.
func (o *Operator) Creds(t testing.TB, name string) string {
	t.Helper()
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	userJWT, err := jwt.NewUserClaims(userPub).Encode(o.account)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	file, err := jwt.FormatUserConfig(userJWT, seed)
	if err != nil {
		t.Fatal(err)
	}
	return WriteFile(t, name, file)
}
