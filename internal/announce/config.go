// Package announce is the `caddy-cx announce` sidecar: it publishes the
// heartbeats of an application that does not speak the protocol itself,
// while the application's health endpoint answers 2xx.
package announce

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/pflag"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/redact"
)

// Config is what the sidecar announces and how it reaches NATS.
type Config struct {
	// NATS is the NATS server URL(s), comma-separated.
	NATS string
	// Prefix is the subject prefix; default heartbeat.DefaultPrefix.
	Prefix string
	// ID, URL, Version and Priority are announced as they are.
	ID       string
	URL      string
	Version  string
	Priority int
	// Interval is both the heartbeat period and the health check period.
	Interval time.Duration
	// Health is checked every Interval; heartbeats go out only while it
	// answers 2xx. Empty: a TCP connect to URL's host:port is the check.
	Health string
	// HealthTimeout bounds one health check; zero means Interval.
	HealthTimeout time.Duration
	// Auth is how to authenticate to NATS: the settings of the gateway's
	// `cx` app, with the same rules.
	Auth heartbeat.Auth

	// tls backs the --tls-* flags; Auth.TLS points to it once one is set.
	tls heartbeat.TLS
}

// option is one flag, with the environment variable that sets it when the
// flag is not given.
type option struct {
	flag, env, usage string
	str              *string
}

func (c *Config) options() []option {
	return []option{
		{"nats", "CX_NATS", "NATS server URL(s), comma-separated (required)", &c.NATS},
		{"id", "CX_ID", "instance id: 1 to 64 of A-Z a-z 0-9 _ - (required)", &c.ID},
		{"url", "CX_URL", "where the gateway sends this instance's traffic, http://HOST:PORT (required)", &c.URL},
		{"health", "CX_HEALTH", "health URL; heartbeats only while it answers 2xx (default: TCP connect to --url)", &c.Health},
		{"version", "CX_VERSION", "the application's version, shown by the gateway", &c.Version},
		{"prefix", "CX_PREFIX", "subject prefix", &c.Prefix},
		{"credentials", "CX_CREDENTIALS", "NATS .creds file (user JWT and nkey seed)", &c.Auth.Credentials},
		{"token", "CX_TOKEN", "NATS token", &c.Auth.Token},
		{"user", "CX_USER", "NATS user (with --password)", &c.Auth.User},
		{"password", "CX_PASSWORD", "NATS password (with --user)", &c.Auth.Password},
		{"nkey", "CX_NKEY", "file holding an nkey seed (SU...)", &c.Auth.NKey},
		{"tls-ca", "CX_TLS_CA", "PEM file of the CAs that sign the NATS servers' certificates", &c.tls.CA},
		{"tls-cert", "CX_TLS_CERT", "PEM client certificate for mutual TLS (with --tls-key)", &c.tls.Cert},
		{"tls-key", "CX_TLS_KEY", "PEM key of --tls-cert", &c.tls.Key},
	}
}

// Usage is the synopsis of the sidecar's command line.
const Usage = "--nats URL --id ID --url http://HOST:PORT [--health URL] [--interval 1s] [--version V] [--priority N] [--prefix P] [auth and tls flags]"

// Env lists the environment variables the sidecar reads, one per flag.
const Env = "CX_NATS, CX_ID, CX_URL, CX_HEALTH, CX_INTERVAL, CX_HEALTH_TIMEOUT, CX_VERSION, CX_PRIORITY, CX_PREFIX, " +
	"CX_CREDENTIALS, CX_TOKEN, CX_USER, CX_PASSWORD, CX_NKEY, CX_TLS_CA, CX_TLS_CERT, CX_TLS_KEY"

// NewConfig returns a configuration with the defaults, its flags added
// to fs: each flag's help names the environment variable Load falls back
// to.
func NewConfig(fs *pflag.FlagSet) *Config {
	c := &Config{Prefix: heartbeat.DefaultPrefix, Interval: time.Second}
	for _, o := range c.options() {
		fs.StringVar(o.str, o.flag, *o.str, o.usage+" ["+o.env+"]")
	}
	fs.DurationVar(&c.Interval, "interval", c.Interval, "heartbeat and health check period, 100ms to 60s [CX_INTERVAL]")
	fs.DurationVar(&c.HealthTimeout, "health-timeout", 0, "timeout of one health check (default: the interval) [CX_HEALTH_TIMEOUT]")
	fs.IntVar(&c.Priority, "priority", 0, "announced priority, -1000 to 1000, lower is preferred [CX_PRIORITY]")
	return c
}

// Load completes c once fs is parsed: every flag not given is read from
// its environment variable (getenv), then the whole is checked.
func (c *Config) Load(fs *pflag.FlagSet, getenv func(string) string) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every setting is a flag, like --id app1", fs.Arg(0))
	}
	if err := c.fromEnv(fs, getenv); err != nil {
		return err
	}
	if c.tls != (heartbeat.TLS{}) {
		c.Auth.TLS = &c.tls
	}
	return c.validate()
}

// Parse reads the configuration from args and, for every flag not given,
// from the environment (getenv; see Env), as `caddy-cx announce` does.
// Help goes to out; -h returns pflag.ErrHelp.
func Parse(args []string, getenv func(string) string, out io.Writer) (*Config, error) {
	fs := pflag.NewFlagSet("caddy-cx announce", pflag.ContinueOnError)
	fs.SetOutput(out)
	c := NewConfig(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return c, c.Load(fs, getenv)
}

// fromEnv fills every flag that was not given from its variable.
func (c *Config) fromEnv(fs *pflag.FlagSet, getenv func(string) string) error {
	given := func(name string) bool { return fs.Changed(name) }
	for _, o := range c.options() {
		if v := getenv(o.env); v != "" && !given(o.flag) {
			*o.str = v
		}
	}
	durations := []struct {
		flag, env string
		dst       *time.Duration
	}{{"interval", "CX_INTERVAL", &c.Interval}, {"health-timeout", "CX_HEALTH_TIMEOUT", &c.HealthTimeout}}
	for _, d := range durations {
		if v := getenv(d.env); v != "" && !given(d.flag) {
			dur, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("%s=%q is not a duration like 1s or 500ms", d.env, v)
			}
			*d.dst = dur
		}
	}
	if v := getenv("CX_PRIORITY"); v != "" && !given("priority") {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("CX_PRIORITY=%q is not a whole number", v)
		}
		c.Priority = n
	}
	return nil
}

func (c *Config) validate() error {
	for _, req := range []struct{ val, flag, env, example string }{
		{c.NATS, "nats", "CX_NATS", "nats://nats:4222"},
		{c.ID, "id", "CX_ID", "app1"},
		{c.URL, "url", "CX_URL", "http://app1:8080"},
	} {
		if req.val == "" {
			return fmt.Errorf("--%s is required (or %s), like --%s %s", req.flag, req.env, req.flag, req.example)
		}
	}
	if err := validNATS(c.NATS); err != nil {
		return err
	}
	if err := c.validHeartbeat(); err != nil {
		return err
	}
	if c.Health != "" {
		u, err := url.Parse(c.Health)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--health %q is not an http(s) URL like http://127.0.0.1:8080/health", c.Health)
		}
	}
	if c.HealthTimeout < 0 {
		return fmt.Errorf("--health-timeout %v must not be negative", c.HealthTimeout)
	}
	if c.HealthTimeout == 0 {
		c.HealthTimeout = c.Interval
	}
	// the flags are the settings' names: "tls cert" is --tls-cert
	return c.Auth.ValidateNamed(func(setting string) string { return "--" + strings.ReplaceAll(setting, " ", "-") })
}

// validHeartbeat checks the announced fields with the protocol's rules.
func (c *Config) validHeartbeat() error {
	if err := heartbeat.ValidPrefix(c.Prefix); err != nil {
		return fmt.Errorf("--prefix: %v", err)
	}
	if !heartbeat.ValidID(c.ID) {
		return fmt.Errorf("--id %q: use 1 to %d characters of A-Z a-z 0-9 _ - (a hostname with dots replaced, a pod name)", c.ID, heartbeat.MaxIDLen)
	}
	if err := heartbeat.ValidURL(c.URL); err != nil {
		var he *heartbeat.Error
		if errors.As(err, &he) {
			return fmt.Errorf("--url: %s (want http://HOST:PORT, the address the gateway can reach)", he.Reason)
		}
		return fmt.Errorf("--url: %v", err)
	}
	if c.Interval < heartbeat.MinIntervalMS*time.Millisecond || c.Interval > heartbeat.MaxIntervalMS*time.Millisecond {
		return fmt.Errorf("--interval %v: use 100ms to 60s", c.Interval)
	}
	if n := utf8.RuneCountInString(c.Version); n > heartbeat.MaxVersionLen {
		return fmt.Errorf("--version: %d characters, at most %d", n, heartbeat.MaxVersionLen)
	}
	if c.Priority < heartbeat.MinPriority || c.Priority > heartbeat.MaxPriority {
		return fmt.Errorf("--priority %d: use %d to %d, lower is preferred", c.Priority, heartbeat.MinPriority, heartbeat.MaxPriority)
	}
	return nil
}

func validNATS(urls string) error {
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if err := heartbeat.ValidServerURL(u); err != nil {
			return fmt.Errorf("--nats %q: %v", redact.URL(u), err)
		}
	}
	return nil
}
