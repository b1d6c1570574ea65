package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddy-cx/caddy-cx/internal/natstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestNATSProblemNamesTheCause feeds natsProblem the errors real failed
// connections produce.
func TestNATSProblemNamesTheCause(t *testing.T) {
	authURL := secureNATS(t, &server.Options{Username: "gw", Password: "right"})
	pki := natstest.NewPKI(t)
	tlsConfig, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: pki.ServerCert, KeyFile: pki.ServerKey})
	if err != nil {
		t.Fatal(err)
	}
	tlsURL := secureNATS(t, &server.Options{TLSConfig: tlsConfig, TLS: true})
	otherCA := natstest.NewPKI(t)
	cases := []struct {
		name string
		url  string
		opts []nats.Option
		want string
	}{
		{"wrong password", authURL, []nats.Option{nats.UserInfo("gw", "wrong")}, "authentication failed"},
		{"no credentials", authURL, nil, "authentication failed"},
		{"unknown CA", tlsURL, []nats.Option{nats.RootCAs(otherCA.CA)}, "TLS failed"},
		{"nothing listening", closedPortURL(t), nil, "unreachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := strings.Replace(c.url, "http://", "nats://", 1)
			nc, err := nats.Connect(url, c.opts...)
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			if got := natsProblem(err); !strings.HasPrefix(got, c.want) {
				t.Fatalf("natsProblem(%v) = %q, want %q...", err, got, c.want)
			}
		})
	}
}
