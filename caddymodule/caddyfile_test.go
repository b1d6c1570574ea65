package caddymodule

import (
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestCaddyfileExampleIsValid keeps Caddyfile.example loadable: adapted and
// provisioned as `caddy-cx validate` does, with no NATS server running.
func TestCaddyfileExampleIsValid(t *testing.T) {
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatalf("Caddyfile.example does not adapt: %v", err)
	}
	var parsed caddy.Config
	if err := caddy.StrictUnmarshalJSON(cfg, &parsed); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&parsed); err != nil {
		t.Fatalf("Caddyfile.example does not validate: %v", err)
	}
}

func TestBadCaddyfileOptionsSayWhatIsWrong(t *testing.T) {
	cases := []struct {
		name, global, site, want string
	}{
		{"unknown cx option", "cx {\n\tnatz nats://x:4222\n}", "cx_proxy", `unknown cx option "natz"`},
		{"nats without url", "cx {\n\tnats\n}", "cx_proxy", "nats needs at least one server URL"},
		{"user without password", "cx {\n\tuser bob\n}", "cx_proxy", "user takes a user name and a password"},
		{"unknown tls option", "cx {\n\ttls {\n\t\tkey k\n\t}\n}", "cx_proxy", `unknown cx tls option "key"`},
		{"bad policy", "", "cx_proxy {\n\tpolicy random\n}", `policy "random": allowed are failover`},
		{"bad stale_after", "", "cx_proxy {\n\tstale_after soon\n}", `stale_after: "soon" is not a positive duration`},
		{"bad prefix", "", "cx_proxy {\n\tsubject_prefix cx.*\n}", "may not contain wildcards"},
		{"bad priority", "", "cx_proxy {\n\tpriority app1 high\n}", `priority: "high" is not a whole number`},
		{"bad priority id", "", "cx_proxy {\n\tpriority app.1 0\n}", `"app.1" is not an instance id`},
		{"upstream address", "", "cx_proxy app1:8080", "cx_proxy takes no upstream addresses"},
		{"to", "", "cx_proxy {\n\tto app1:8080\n}", "upstreams come from NATS"},
		{"unknown dynamic option", "", "reverse_proxy {\n\tdynamic cx {\n\t\tstale 3s\n\t}\n}", `unknown option "stale"`},
		{"bad network", "", "cx_proxy {\n\tallow_networks 10.0.0.0/33\n}", `allow_networks: "10.0.0.0/33" is not a CIDR network`},
		{"bad versions", "", "cx_proxy {\n\tversions newest\n}", `versions "newest": allowed are any (the default) and consistent`},
		{"bad confirm_with", "", "reverse_proxy {\n\tdynamic cx {\n\t\tconfirm_with health\n\t}\n}", "must be a path starting with /"},
		{"bad header_instance", "", "cx_proxy {\n\theader_instance X:Bad\n}", `header_instance: "X:Bad" is not a valid header name`},
		{"priority out of range", "", "cx_proxy {\n\tpriority app1 5000\n}", "priority app1 5000: use -1000 to 1000"},
		{"active health check", "", "cx_proxy {\n\thealth_uri /health\n}", "health_uri configures an active health check, which Caddy does not run"},
		{"active health interval", "", "cx_proxy {\n\thealth_interval 5s\n}", "use the sidecar's --health (caddy-cx announce) or cx_proxy's confirm_with"},
		{"bad share_failures", "", "cx_proxy {\n\tshare_failures maybe\n}", `share_failures: "maybe" is neither on nor off`},
		{"policy with args", "", "reverse_proxy {\n\tdynamic cx\n\tlb_policy cx_failover now\n}", "cx_failover takes no arguments"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := "{\n" + c.global + "\n}\n:8080 {\n" + c.site + "\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("accepted:\n%s", src)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error %q should name the file and line and say %q", err, c.want)
			}
		})
	}
}

func TestBadValuesFailProvisioning(t *testing.T) {
	cases := []struct{ name, global, site, want string }{
		{"nats scheme", "cx {\n\tnats http://127.0.0.1:4222\n}", "cx_proxy", "scheme must be nats"},
		{"two auth methods", "cx {\n\ttoken t\n\tnkey /x\n}", "cx_proxy", "choose one of credentials, token, user or nkey"},
		{"embedded and external", "cx {\n\tnats nats://127.0.0.1:4222\n\tembedded_nats 127.0.0.1:4223\n}", "cx_proxy", "not both"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := "{\n" + c.global + "\n}\n:8080 {\n" + c.site + "\n}\n"
			cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
			if err != nil {
				t.Fatal(err)
			}
			var parsed caddy.Config
			if err := caddy.StrictUnmarshalJSON(cfg, &parsed); err != nil {
				t.Fatal(err)
			}
			err = caddy.Validate(&parsed)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("validate: %v; want an error saying %q", err, c.want)
			}
		})
	}
}

func TestCxProxyWithMatcherAndOverrides(t *testing.T) {
	src := ":8080 {\n\tcx_proxy /api/* {\n\t\tstale_after 2s\n\t\tpolicy round_robin\n\t\tlb_retries 2\n\t\ttransport http {\n\t\t\tdial_timeout 1s\n\t\t}\n\t}\n}\n"
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"path":["/api/*"]`,
		`"stale_after":2000000000`,
		`"policy":"cx_round_robin"`,
		`"retries":2`,
		`"dial_timeout":1000000000`,
		`"protocol":"cx"`,
		`"max_idle_conns_per_host":128`,
	} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("adapted config lacks %s:\n%s", want, cfg)
		}
	}
}
