package announce

import (
	"fmt"

	"github.com/nats-io/nats.go"
)

// natsOptions are the connection options of the auth and TLS settings,
// the same choices as the gateway's `cx` app.
func (a *Auth) natsOptions() ([]nats.Option, error) {
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
			return nil, fmt.Errorf("--nkey %s: %w (want a file holding an nkey seed, SU...)", a.NKey, err)
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
