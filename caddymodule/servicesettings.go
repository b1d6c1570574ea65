package caddymodule

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// serviceSettings are what one config asks of the service of a prefix.
// Two sites of one config that name the same prefix must ask the same:
// they share its registry.
type serviceSettings struct {
	// membership is the registry's configuration; its hooks (OnEvent,
	// Deny, Confirm) are the service's own and are not compared.
	membership  membership.Config
	failTimeout time.Duration
	confirmWith string
	// failbackDelay decides who is primary (primary.go), which the status
	// page and metrics show per service: one value per prefix.
	failbackDelay time.Duration
	// shareFailuresOff is `share_failures off`: the service neither
	// publishes the failures it counts nor applies its fleet's.
	shareFailuresOff bool
}

// settingNames are the config options behind membership.Config's fields;
// a field missing here is not compared (TestServiceSettingsCoverEveryField
// makes sure that only the hooks are missing).
var settingNames = map[string]string{
	"Prefix": "subject_prefix", "StaleAfter": "stale_after", "ForgetAfter": "forget_after",
	"MaxInstances": "max_instances", "AllowNetworks": "allow_networks", "AllowIDs": "allow_ids",
	"PriorityRange": "priority_range", "ClockSkew": "clock_skew", "Scheme": "scheme", "Priority": "priority",
	"Rise": "rise", "FlapLimit": "flap_limit", "FlapWindow": "flap_window", "FlapHold": "flap_hold",
	"ConsistentVersions": "versions", "RebuildEvery": "rebuild_every",
}

// differences lists the settings in which a and b differ, as
// "stale_after 3s vs 5s".
func (a serviceSettings) differences(b serviceSettings) []string {
	var out []string
	va, vb := reflect.ValueOf(a.membership), reflect.ValueOf(b.membership)
	typ := va.Type()
	for i := range typ.NumField() {
		name, ok := settingNames[typ.Field(i).Name]
		if ok && !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, fmt.Sprintf("%s %s vs %s", name, settingText(va.Field(i)), settingText(vb.Field(i))))
		}
	}
	if a.failTimeout != b.failTimeout {
		out = append(out, fmt.Sprintf("fail_timeout %v vs %v", a.failTimeout, b.failTimeout))
	}
	if a.failbackDelay != b.failbackDelay {
		out = append(out, fmt.Sprintf("failback_delay %v vs %v", a.failbackDelay, b.failbackDelay))
	}
	if a.shareFailuresOff != b.shareFailuresOff {
		out = append(out, fmt.Sprintf("share_failures %s vs %s", onOff(!a.shareFailuresOff), onOff(!b.shareFailuresOff)))
	}
	if a.confirmWith != b.confirmWith {
		out = append(out, fmt.Sprintf("confirm_with %q vs %q", a.confirmWith, b.confirmWith))
	}
	return out
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// settingText writes one setting's value as an operator would.
func settingText(v reflect.Value) string {
	switch {
	case v.IsZero():
		return "unset"
	case v.Kind() == reflect.Bool:
		return "consistent" // the only bool: versions
	case v.Kind() == reflect.Pointer:
		return strings.Trim(fmt.Sprint(v.Elem().Interface()), "{}")
	}
	return strings.Trim(fmt.Sprint(v.Interface()), "[]")
}

// sharedPrefixError explains two sites that name one prefix with
// different settings.
func sharedPrefixError(prefix string, diff []string) error {
	return fmt.Errorf("cx: subject_prefix %s is used by two cx_proxy (or dynamic cx) blocks with different settings (%s): "+
		"give each its own subject_prefix or the same settings", prefix, strings.Join(diff, ", "))
}
