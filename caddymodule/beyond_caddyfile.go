package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalBeyond reads the source options for versions, damping, slow
// start, failback and confirmation.
func (u *Upstreams) unmarshalBeyond(d *caddyfile.Dispenser, opt string) error {
	switch opt {
	case "versions":
		if err := oneArg(d, &u.Versions); err != nil {
			return err
		}
		if u.Versions != "any" && u.Versions != "consistent" {
			return d.Errf("versions %q: allowed are any (the default) and consistent", u.Versions)
		}
	case "rise":
		return countArg(d, &u.Rise)
	case "flap_limit":
		return countArg(d, &u.FlapLimit)
	case "flap_window":
		return durationArg(d, &u.FlapWindow)
	case "flap_hold":
		return durationArg(d, &u.FlapHold)
	case "slow_start":
		return durationArg(d, &u.SlowStart)
	case "failback_delay":
		return durationArg(d, &u.FailbackDelay)
	case "confirm_with":
		if err := oneArg(d, &u.ConfirmWith); err != nil {
			return err
		}
		if !strings.HasPrefix(u.ConfirmWith, "/") {
			return d.Errf("confirm_with %q must be a path starting with /, like /health", u.ConfirmWith)
		}
	default:
		return d.Errf("unknown option %q; allowed: %s", opt, strings.Join(sourceOptions, ", "))
	}
	return nil
}

// countArg reads one positive whole number into dst.
func countArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return d.Errf("%s: %q is not a positive whole number", name, s)
	}
	*dst = n
	return nil
}
