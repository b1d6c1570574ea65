package heartbeat

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/nats-io/nats.go"
)

// Auth is how a NATS client authenticates and secures its connection: the
// same settings, with the same rules, for the gateway (the `cx` app
// embeds it, so these JSON names are the app's) and for instances (the
// announce sidecar's flags and environment fill it).
type Auth struct {
	// Credentials is a NATS JWT .creds file (user JWT and nkey seed).
	Credentials string `json:"credentials,omitempty"`

	// Token authenticates with a NATS token.
	Token string `json:"token,omitempty"`

	// User and Password authenticate with NATS user/password; each
	// needs the other.
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`

	// NKey is a file holding an nkey seed (SU...) to authenticate with.
	NKey string `json:"nkey,omitempty"`

	// TLS configures TLS to the NATS servers.
	TLS *TLS `json:"tls,omitempty"`
}

// TLS is the TLS configuration of a NATS connection.
type TLS struct {
	// CA is a PEM file of the certificate authorities that sign the NATS
	// servers' certificates.
	CA string `json:"ca,omitempty"`

	// Cert and Key are a PEM client certificate and its key, for mutual
	// TLS; each needs the other.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
}

// Validate checks a's rules (one authentication method; user with
// password; TLS cert with key), naming the settings by their JSON names.
func (a Auth) Validate() error {
	return a.ValidateNamed(func(setting string) string { return setting })
}

// ValidateNamed is Validate with the settings named by name (given
// "user" or "tls cert"), so that a command line's errors name its flags.
func (a Auth) ValidateNamed(name func(setting string) string) error {
	methods := 0
	for _, set := range []bool{a.Credentials != "", a.Token != "", a.User != "", a.NKey != ""} {
		if set {
			methods++
		}
	}
	switch {
	case methods > 1:
		return fmt.Errorf("choose one of %s, %s, %s or %s", name("credentials"), name("token"), name("user"), name("nkey"))
	case (a.User == "") != (a.Password == ""):
		return fmt.Errorf("%s needs %s and %s needs %s", name("user"), name("password"), name("password"), name("user"))
	case a.TLS == nil:
		return nil
	case (a.TLS.Cert == "") != (a.TLS.Key == ""):
		return fmt.Errorf("%s and %s go together", name("tls cert"), name("tls key"))
	case a.TLS.CA == "" && a.TLS.Cert == "":
		return fmt.Errorf("tls needs %s, or %s and %s, or both", name("tls ca"), name("tls cert"), name("tls key"))
	}
	return nil
}

// Options returns the nats.go options for a, after checking it.
func (a Auth) Options() ([]nats.Option, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
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
	if a.TLS != nil && a.TLS.CA != "" {
		opts = append(opts, nats.RootCAs(a.TLS.CA))
	}
	if a.TLS != nil && a.TLS.Cert != "" {
		opts = append(opts, nats.ClientCert(a.TLS.Cert, a.TLS.Key))
	}
	return opts, nil
}

// ValidServerURL checks one NATS server URL (nats://host:4222, or tls,
// ws, wss). The error does not repeat the URL, which may hold a password:
// the caller names it, redacted.
func ValidServerURL(u string) error {
	parsed, err := url.Parse(u)
	if err != nil || parsed.Host == "" {
		return errors.New("not a URL like nats://host:4222")
	}
	switch parsed.Scheme {
	case "nats", "tls", "ws", "wss":
		return nil
	}
	return errors.New("scheme must be nats, tls, ws or wss")
}
