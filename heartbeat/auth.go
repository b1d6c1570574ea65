package heartbeat

import (
	"fmt"

	"github.com/nats-io/nats.go"
)

// Auth is how a NATS client authenticates and secures its connection, the
// same choices for instances (the announce sidecar) and the gateway: at
// most one of Credentials, Token, User with Password, NKey; TLS with a
// private CA and/or a client certificate.
type Auth struct {
	Credentials string // JWT .creds file
	Token       string
	User        string
	Password    string
	NKey        string // file holding an nkey seed (SU...)
	TLSCA       string // PEM file of the CAs that sign the servers' certificates
	TLSCert     string // PEM client certificate, for mutual TLS
	TLSKey      string // its key
}

// Options returns the nats.go options for a.
func (a Auth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case a.Credentials != "":
		opts = append(opts, nats.UserCredentials(a.Credentials))
	case a.Token != "":
		opts = append(opts, nats.Token(a.Token))
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	case a.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(a.NKey)
		if err != nil {
			return nil, fmt.Errorf("nkey %s: %w (want a file holding an nkey seed, SU...)", a.NKey, err)
		}
		opts = append(opts, opt)
	}
	if a.TLSCA != "" {
		opts = append(opts, nats.RootCAs(a.TLSCA))
	}
	if a.TLSCert != "" {
		opts = append(opts, nats.ClientCert(a.TLSCert, a.TLSKey))
	}
	return opts, nil
}
