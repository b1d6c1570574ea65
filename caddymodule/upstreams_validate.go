package caddymodule

import (
	"fmt"
	"net/netip"
	"path"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/net/http/httpguts"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Validate checks the source's settings, each rule once, with errors that
// say what to fix. Caddy calls it for JSON configs, Provision (through
// config) before using them, and the Caddyfile parsers after every
// option, so that their errors carry the option's file and line. Settings
// left zero mean their defaults and always pass.
func (u *Upstreams) Validate() error {
	for _, check := range []func() error{u.validateNames, u.validateNumbers, u.validateTrust} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// validateNames checks the settings that are names, paths or choices.
func (u *Upstreams) validateNames() error {
	if u.SubjectPrefix != "" {
		if err := heartbeat.ValidPrefix(u.SubjectPrefix); err != nil {
			return fmt.Errorf("subject_prefix: %v", err)
		}
	}
	switch u.Versions {
	case "", "any", "consistent":
	default:
		return fmt.Errorf("versions %q: allowed are any (the default) and consistent", u.Versions)
	}
	if u.ConfirmWith != "" && !strings.HasPrefix(u.ConfirmWith, "/") {
		return fmt.Errorf("confirm_with %q must be a path starting with /, like /health", u.ConfirmWith)
	}
	if u.HeaderInstance != "" && !httpguts.ValidHeaderFieldName(u.HeaderInstance) {
		return fmt.Errorf("header_instance: %q is not a valid header name (a token, like %s)", u.HeaderInstance, DefaultInstanceHeader)
	}
	switch u.Scheme {
	case "", "http", "https":
	default:
		return fmt.Errorf("scheme %q: allowed are http (the default) and https", u.Scheme)
	}
	for id, n := range u.Priority {
		if !heartbeat.ValidID(id) {
			return fmt.Errorf("priority: %q is not an instance id (1 to %d of A-Z a-z 0-9 _ -)", id, heartbeat.MaxIDLen)
		}
		if n < heartbeat.MinPriority || n > heartbeat.MaxPriority {
			return fmt.Errorf("priority %s %d: use %d to %d, lower is preferred", id, n, heartbeat.MinPriority, heartbeat.MaxPriority)
		}
	}
	return nil
}

// validateNumbers refuses negative counts and durations: zero is the
// default, and no setting means anything below it.
func (u *Upstreams) validateNumbers() error {
	counts := []struct {
		name string
		n    int
	}{{"max_instances", u.MaxInstances}, {"rise", u.Rise}, {"flap_limit", u.FlapLimit}}
	for _, c := range counts {
		if c.n < 0 {
			return fmt.Errorf("%s %d must not be negative (leave it out for the default)", c.name, c.n)
		}
	}
	durations := []struct {
		name string
		d    caddy.Duration
	}{
		{"stale_after", u.StaleAfter}, {"forget_after", u.ForgetAfter}, {"fail_timeout", u.FailTimeout},
		{"flap_window", u.FlapWindow}, {"flap_hold", u.FlapHold}, {"slow_start", u.SlowStart},
		{"failback_delay", u.FailbackDelay},
		{"clock_skew", u.ClockSkew},
	}
	for _, d := range durations {
		if d.d < 0 {
			return fmt.Errorf("%s must not be negative (leave it out for the default)", d.name)
		}
	}
	return nil
}

// validateTrust checks the settings that decide who may be routed.
func (u *Upstreams) validateTrust() error {
	for _, s := range u.AllowNetworks {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("allow_networks: %q is not a CIDR network like 10.0.0.0/8: %v", s, err)
		}
	}
	for _, g := range u.AllowIDs {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			return fmt.Errorf("allow_ids: %q is not a valid glob; use *, ? and [a-z] as in app-* or worker[0-9]", g)
		}
	}
	if r := u.PriorityRange; r != nil {
		if r.Min < heartbeat.MinPriority || r.Max > heartbeat.MaxPriority {
			return fmt.Errorf("priority_range %d %d: both ends must be within %d to %d", r.Min, r.Max, heartbeat.MinPriority, heartbeat.MaxPriority)
		}
		if r.Min > r.Max {
			return fmt.Errorf("priority_range %d %d: min is greater than max; give the lower end first, like priority_range %d %d", r.Min, r.Max, r.Max, r.Min)
		}
	}
	return nil
}

// Interface guard.
var _ caddy.Validator = (*Upstreams)(nil)
