package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalRolloutOption reads the source options that shape rollouts and
// failures: versions, damping, slow start, failback and confirmation (and,
// through unmarshalTrustOption, the trust options).
func (u *Upstreams) unmarshalRolloutOption(d *caddyfile.Dispenser, opt string) error {
	switch opt {
	case "versions":
		return oneArg(d, &u.Versions)
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
		return oneArg(d, &u.ConfirmWith)
	}
	return u.unmarshalTrustOption(d, opt)
}

// unmarshalTrustOption reads the source options that decide who may be routed.
func (u *Upstreams) unmarshalTrustOption(d *caddyfile.Dispenser, opt string) error {
	switch opt {
	case "allow_ids":
		globs := d.RemainingArgs()
		if len(globs) == 0 {
			return d.Errf("allow_ids needs at least one id or glob, like: allow_ids app-* worker[0-9]")
		}
		u.AllowIDs = append(u.AllowIDs, globs...)
	case "priority_range":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("priority_range takes a min and a max, like: priority_range 0 100")
		}
		lo, err1 := strconv.Atoi(args[0])
		hi, err2 := strconv.Atoi(args[1])
		if err1 != nil || err2 != nil {
			return d.Errf("priority_range: %q %q are not whole numbers, like: priority_range 0 100", args[0], args[1])
		}
		u.PriorityRange = &PriorityRange{Min: lo, Max: hi}
	case "clock_skew":
		return durationArg(d, &u.ClockSkew)
	case "scheme":
		return oneArg(d, &u.Scheme)
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
