package caddymodule

import (
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// FuzzCaddyfile feeds arbitrary text to every caddy-cx directive and
// option: adapting must never panic, whatever the input.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"cx_proxy",
		"cx_proxy {\n\tsubject_prefix cx.ha\n\tpolicy round_robin\n\tstale_after 3s\n}",
		"cx_proxy /api/* {\n\tpriority app1 0\n\tallow_networks 10.0.0.0/8\n\tlb_retries 2\n}",
		"cx_proxy {\n\ttransport http {\n\t\tdial_timeout 1s\n\t}\n}",
		"reverse_proxy {\n\tdynamic cx {\n\t\tmax_instances 5\n\t}\n\tlb_policy cx_failover\n}",
		"cx_proxy {\n\tpolicy\n}",
		"cx_proxy {\n\tpriority\n\tpriority a\n}",
		"cx_proxy {\n\t{\n}",
	} {
		f.Add(seed, "nats nats://127.0.0.1:4222")
	}
	f.Add("cx_proxy", "tls {\n\tca x\n\tcert a b\n}")
	f.Add("cx_proxy", "user a b\n\ttoken")
	f.Fuzz(func(t *testing.T, site, global string) {
		src := "{\n\tcx {\n\t\t" + global + "\n\t}\n}\n:8080 {\n" + site + "\n}\n"
		_, _, _ = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
	})
}
