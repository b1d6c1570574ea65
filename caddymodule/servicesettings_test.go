package caddymodule

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// TestServiceSettingsCoverEveryField: two sites whose settings differ in
// any field of membership.Config are told apart (a config error), else
// the one applied would silently win: with scheme, a TLS site and a plain
// one would refuse each other's instances.
func TestServiceSettingsCoverEveryField(t *testing.T) {
	// AwaitControls is the service's own (the control follower), not an option
	hooks := map[string]bool{"OnEvent": true, "Deny": true, "Confirm": true, "AwaitControls": true}
	base := serviceSettings{membership: membership.Config{Prefix: "cx.ha"}}
	typ := reflect.TypeFor[membership.Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if hooks[f.Name] {
			continue
		}
		other := base
		v := reflect.ValueOf(&other.membership).Elem().Field(i)
		switch v.Kind() {
		case reflect.String:
			v.SetString("x.y")
		case reflect.Int, reflect.Int64:
			v.SetInt(7)
		case reflect.Bool:
			v.SetBool(true)
		case reflect.Slice:
			switch f.Type.Elem() {
			case reflect.TypeFor[string]():
				v.Set(reflect.ValueOf([]string{"app*"}))
			case reflect.TypeFor[netip.Prefix]():
				v.Set(reflect.ValueOf([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}))
			default:
				t.Fatalf("field %s: teach this test its type %v", f.Name, f.Type)
			}
		case reflect.Map:
			v.Set(reflect.ValueOf(map[string]int{"app1": 1}))
		case reflect.Pointer:
			v.Set(reflect.New(f.Type.Elem()))
			v.Elem().Field(0).SetInt(1)
		default:
			t.Fatalf("field %s: teach this test its kind %v", f.Name, v.Kind())
		}
		diff := base.differences(other)
		if len(diff) != 1 || !strings.HasPrefix(diff[0], settingNames[f.Name]+" ") {
			t.Errorf("membership.Config.%s changed: differences %q, want one naming its option", f.Name, diff)
		}
	}
	if d := base.differences(serviceSettings{membership: base.membership, failTimeout: time.Second, confirmWith: "/h",
		failbackDelay: time.Second, shareFailuresOff: true}); len(d) != 4 || d[2] != "share_failures on vs off" {
		t.Errorf("fail_timeout, confirm_with, failback_delay and share_failures changed: differences %q", d)
	}
	probe := base
	probe.membership.OnEvent = func(membership.Event) {}
	probe.membership.Confirm = func(string) bool { return true }
	if d := base.differences(probe); len(d) != 0 {
		t.Errorf("hooks are compared: %q", d)
	}
}

// TestServiceSettingsText: what the config error says of each value.
func TestServiceSettingsText(t *testing.T) {
	a := serviceSettings{membership: membership.Config{StaleAfter: 3 * time.Second, AllowIDs: []string{"app-*", "web-?"},
		PriorityRange: &membership.PriorityRange{Min: 0, Max: 10}}}
	b := serviceSettings{membership: membership.Config{StaleAfter: 5 * time.Second, ConsistentVersions: true}}
	got := strings.Join(a.differences(b), ", ")
	want := "stale_after 3s vs 5s, allow_ids app-* web-? vs unset, priority_range 0 10 vs unset, versions unset vs consistent"
	if got != want {
		t.Errorf("differences\n%s\nwant\n%s", got, want)
	}
}
