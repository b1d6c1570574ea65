package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic cx {
//		subject_prefix <prefix>
//		stale_after    <duration>
//		forget_after   <duration>
//		fail_timeout   <duration>
//		share_failures on|off
//		allow_networks <cidr...>
//		allow_ids      <glob...>
//		priority       <id> <n>
//		priority_range <min> <max>
//		clock_skew     <duration>
//		scheme         http|https
//		max_instances  <n>
//		header_instance [<name>]
//		versions       any|consistent
//		rise           <n>
//		flap_limit     <n>
//		flap_window    <duration>
//		flap_hold      <duration>
//		slow_start     <duration>
//		failback_delay <duration>
//		confirm_with   <path>
//	}
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // source name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if err := u.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

// sourceOptions are the options of `dynamic cx`, which cx_proxy takes too.
var sourceOptions = []string{"subject_prefix", "stale_after", "forget_after", "fail_timeout", "share_failures", "allow_networks",
	"priority", "max_instances", "header_instance", "versions", "rise", "flap_limit", "flap_window", "flap_hold",
	"slow_start", "failback_delay", "confirm_with", "allow_ids", "priority_range", "clock_skew", "scheme"}

// unmarshalOption reads one option of the source (cx_proxy shares it)
// and checks the settings so far with Validate, so that an error names
// the option's file and line.
func (u *Upstreams) unmarshalOption(d *caddyfile.Dispenser) error {
	if err := u.parseOption(d); err != nil {
		return err
	}
	if err := u.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// parseOption reads one option's arguments; their meaning is Validate's.
func (u *Upstreams) parseOption(d *caddyfile.Dispenser) error {
	switch opt := d.Val(); opt {
	case "subject_prefix":
		return oneArg(d, &u.SubjectPrefix)
	case "stale_after":
		return durationArg(d, (*caddy.Duration)(&u.StaleAfter))
	case "forget_after":
		return durationArg(d, (*caddy.Duration)(&u.ForgetAfter))
	case "fail_timeout":
		return durationArg(d, (*caddy.Duration)(&u.FailTimeout))
	case "share_failures":
		return onOffArg(d, &u.ShareFailures)
	case "allow_networks":
		nets := d.RemainingArgs()
		if len(nets) == 0 {
			return d.Errf("allow_networks needs at least one CIDR network, like 10.0.0.0/8")
		}
		u.AllowNetworks = append(u.AllowNetworks, nets...)
	case "priority":
		return u.unmarshalPriority(d)
	case "max_instances":
		return countArg(d, &u.MaxInstances)
	case "header_instance":
		u.HeaderInstance = DefaultInstanceHeader
		if d.NextArg() {
			u.HeaderInstance = d.Val()
		}
		if d.NextArg() {
			return d.Errf("header_instance takes at most one header name, like: header_instance X-Cx-Instance")
		}
	default:
		return u.unmarshalRolloutOption(d, opt)
	}
	return nil
}

func (u *Upstreams) unmarshalPriority(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Errf("priority takes an instance id and a number, like: priority app1 0")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return d.Errf("priority: %q is not a whole number from %d to %d", args[1], heartbeat.MinPriority, heartbeat.MaxPriority)
	}
	if u.Priority == nil {
		u.Priority = map[string]int{}
	}
	u.Priority[args[0]] = n
	return nil
}

// onOffArg reads one argument, on or off, into dst.
func onOffArg(d *caddyfile.Dispenser, dst **bool) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	if s != "on" && s != "off" {
		return d.Errf("%s: %q is neither on nor off", name, s)
	}
	on := s == "on"
	*dst = &on
	return nil
}

// durationArg reads one duration argument into dst.
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur <= 0 {
		return d.Errf("%s: %q is not a positive duration like 3s or 500ms", name, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Upstreams)(nil)
