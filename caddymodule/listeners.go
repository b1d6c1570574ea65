package caddymodule

import (
	"reflect"

	"github.com/caddyserver/caddy/v2"
)

// adminListens returns the admin API's listen addresses (local and, if
// enabled, remote) of the config ctx belongs to.
//
// Caddy does not expose a config's admin settings to apps: they are read
// from the Context's unexported config by reflection (read-only). If that
// ever fails (a Caddy version that changed its layout), Caddy's default
// admin address is assumed, which is the address an attacker would aim at
// first; TestAdminAPIIsNeverAnInstance pins the behaviour.
func adminListens(ctx caddy.Context) []string {
	admin, ok := adminConfigOf(ctx)
	if !ok {
		return []string{caddy.DefaultAdminListen}
	}
	if !admin.IsValid() || admin.IsNil() {
		return []string{caddy.DefaultAdminListen} // no admin settings: the default
	}
	a := admin.Elem()
	var out []string
	if disabled := a.FieldByName("Disabled"); !disabled.IsValid() || disabled.Kind() != reflect.Bool || !disabled.Bool() {
		out = append(out, withDefault(stringField(a, "Listen"), caddy.DefaultAdminListen))
	}
	if remote := a.FieldByName("Remote"); remote.IsValid() && remote.Kind() == reflect.Pointer && !remote.IsNil() {
		out = append(out, withDefault(stringField(remote.Elem(), "Listen"), caddy.DefaultRemoteAdminListen))
	}
	return out
}

// adminConfigOf returns ctx's cfg.Admin (a *caddy.AdminConfig value, maybe
// nil) and whether the config was found at all.
func adminConfigOf(ctx caddy.Context) (reflect.Value, bool) {
	cfg := reflect.ValueOf(ctx).FieldByName("cfg")
	if !cfg.IsValid() || cfg.Kind() != reflect.Pointer || cfg.IsNil() || cfg.Type().Elem() != reflect.TypeFor[caddy.Config]() {
		return reflect.Value{}, false
	}
	admin := cfg.Elem().FieldByName("Admin")
	if !admin.IsValid() || admin.Type() != reflect.TypeFor[*caddy.AdminConfig]() {
		return reflect.Value{}, false
	}
	return admin, true
}

func stringField(v reflect.Value, name string) string {
	f := v.FieldByName(name)
	if !f.IsValid() || f.Kind() != reflect.String {
		return ""
	}
	return f.String()
}

// withDefault returns addr with placeholders ({env.X}) replaced, or def
// when addr is empty.
func withDefault(addr, def string) string {
	if addr == "" {
		return def
	}
	return caddy.NewReplacer().ReplaceAll(addr, "")
}
