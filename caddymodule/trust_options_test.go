package caddymodule

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

func adapt(t *testing.T, site string) (string, error) {
	t.Helper()
	src := ":8080 {\n" + site + "\n}\n"
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
	return string(cfg), err
}

func TestTrustOptionsAdapt(t *testing.T) {
	cases := []struct {
		name, site string
		want       []string
		not        []string
	}{
		{"cx_proxy", "cx_proxy {\n\tallow_ids app-* worker[0-9]\n\tallow_ids exact\n\tpriority_range 0 100\n\tclock_skew 30s\n}",
			[]string{`"allow_ids":["app-*","worker[0-9]","exact"]`, `"priority_range":{"max":100,"min":0}`, `"clock_skew":30000000000`},
			[]string{`"scheme"`}},
		{"dynamic cx", "reverse_proxy {\n\tdynamic cx {\n\t\tallow_ids app-*\n\t\tpriority_range -10 -1\n\t\tclock_skew 2m\n\t\tscheme https\n\t}\n}",
			[]string{`"allow_ids":["app-*"]`, `"priority_range":{"max":-1,"min":-10}`, `"clock_skew":120000000000`, `"scheme":"https"`}, nil},
		{"cx_proxy with tls is https", "cx_proxy {\n\ttransport http {\n\t\ttls\n\t}\n}",
			[]string{`"scheme":"https"`, `"protocol":"cx"`, `"tls":{}`}, nil},
		{"cx_proxy with tls and scheme https", "cx_proxy {\n\tscheme https\n\ttransport http {\n\t\ttls_server_name app.internal\n\t}\n}",
			[]string{`"scheme":"https"`}, nil},
		{"cx_proxy without tls is http", "cx_proxy {\n\tscheme http\n}", []string{`"scheme":"http"`}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := adapt(t, c.site)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range c.want {
				if !strings.Contains(cfg, w) {
					t.Errorf("adapted config lacks %s:\n%s", w, cfg)
				}
			}
			for _, w := range c.not {
				if strings.Contains(cfg, w) {
					t.Errorf("adapted config has %s:\n%s", w, cfg)
				}
			}
		})
	}
}

func TestBadTrustOptionsSayWhatToFix(t *testing.T) {
	cases := []struct{ name, site, want string }{
		{"allow_ids without ids", "cx_proxy {\n\tallow_ids\n}", "allow_ids needs at least one id or glob"},
		{"bad glob", "cx_proxy {\n\tallow_ids app-[\n}", `allow_ids: "app-[" is not a valid glob`},
		{"bad glob in dynamic", "reverse_proxy {\n\tdynamic cx {\n\t\tallow_ids a[\n\t}\n}", `"a[" is not a valid glob`},
		{"range with one end", "cx_proxy {\n\tpriority_range 5\n}", "priority_range takes a min and a max"},
		{"range not numbers", "cx_proxy {\n\tpriority_range low high\n}", "are not whole numbers"},
		{"range min > max", "cx_proxy {\n\tpriority_range 100 0\n}", "min is greater than max; give the lower end first, like priority_range 0 100"},
		{"range outside protocol", "cx_proxy {\n\tpriority_range -5000 0\n}", "both ends must be within -1000 to 1000"},
		{"negative skew", "cx_proxy {\n\tclock_skew -1s\n}", `clock_skew: "-1s" is not a positive duration`},
		{"skew not a duration", "cx_proxy {\n\tclock_skew soon\n}", `clock_skew: "soon" is not a positive duration`},
		{"bad scheme", "cx_proxy {\n\tscheme ftp\n}", `scheme "ftp": allowed are http (the default) and https`},
		{"https without tls", "cx_proxy {\n\tscheme https\n}", "add `transport http { tls }`"},
		{"http with tls", "cx_proxy {\n\tscheme http\n\ttransport http {\n\t\ttls\n\t}\n}", "remove `scheme http`"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := adapt(t, c.site)
			if err == nil {
				t.Fatalf("accepted:\n%s", cfg)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q should say %q", err, c.want)
			}
		})
	}
}

// Values set in JSON, which no Caddyfile check saw, are checked when
// provisioning.
func TestBadTrustValuesFailProvisioning(t *testing.T) {
	cases := []struct {
		name string
		u    Upstreams
		want string
	}{
		{"bad glob", Upstreams{AllowIDs: []string{"app-["}}, `allow_ids: "app-[" is not a valid glob`},
		{"empty glob", Upstreams{AllowIDs: []string{""}}, `allow_ids: "" is not a valid glob`},
		{"min > max", Upstreams{PriorityRange: &PriorityRange{Min: 1, Max: 0}}, "min is greater than max"},
		{"negative skew", Upstreams{ClockSkew: caddy.Duration(-time.Second)}, "clock_skew must not be negative"},
		{"scheme", Upstreams{Scheme: "HTTPS"}, `scheme "HTTPS": allowed are http (the default) and https`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.u.config()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("config: %v; want an error saying %q", err, c.want)
			}
		})
	}
}

// The options reach the registry: what the Caddyfile says is what it
// enforces.
func TestTrustOptionsReachTheRegistry(t *testing.T) {
	u := Upstreams{AllowIDs: []string{"app-*"}, PriorityRange: &PriorityRange{Min: 0, Max: 10},
		ClockSkew: caddy.Duration(time.Second), Scheme: "https", Priority: map[string]int{"app-boss": -5}}
	cfg, err := u.config()
	if err != nil {
		t.Fatal(err)
	}
	var events []membership.Event
	cfg.OnEvent = func(ev membership.Event) { events = append(events, ev) }
	cfg.RebuildEvery = 0 // every change at once, to read the snapshot
	r, err := membership.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	beat := func(id, url string, prio int, started time.Time) *heartbeat.Message {
		return &heartbeat.Message{Proto: heartbeat.Proto, ID: id, URL: url, State: heartbeat.StateReady,
			StartedAt: started, Seq: 1, IntervalMS: 1000, Priority: prio}
	}
	r.Apply(beat("intruder", "https://10.0.0.9:443", -1000, now), now)
	r.Apply(beat("app-1", "http://10.0.0.1:80", 0, now), now)
	r.Apply(beat("app-2", "https://10.0.0.2:443", 0, now.Add(2*time.Second)), now)
	r.Apply(beat("app-3", "https://10.0.0.3:443", -1000, now), now)
	r.Apply(beat("app-boss", "https://10.0.0.4:443", 1000, now), now)
	var got []string
	for _, ev := range events {
		got = append(got, string(ev.Kind)+" "+ev.ID+" "+ev.Reason)
	}
	want := []string{"rejected intruder id", "rejected app-1 scheme", "rejected app-2 clock",
		"join app-3 ", "priority_clamped app-3 ", "join app-boss "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("events %q, want %q", got, want)
	}
	routes := r.Snapshot().Routes
	if len(routes) != 2 || routes[0].ID != "app-boss" || routes[0].Priority != -5 || routes[1].Priority != 0 {
		t.Fatalf("routes %+v, want app-boss (override -5) then app-3 (clamped to 0)", routes)
	}
}

// TestUpstreamsValidate: every rule of the source's settings, as Caddy
// checks a JSON config (Validate), with what to fix in the error; the
// zero value (every default) passes.
func TestUpstreamsValidate(t *testing.T) {
	if err := new(Upstreams).Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	neg := caddy.Duration(-time.Second)
	cases := []struct {
		name string
		u    Upstreams
		want string
	}{
		{"prefix", Upstreams{SubjectPrefix: "cx.>"}, "subject_prefix:"},
		{"versions", Upstreams{Versions: "latest"}, `versions "latest": allowed are any (the default) and consistent`},
		{"confirm_with", Upstreams{ConfirmWith: "health"}, `confirm_with "health" must be a path starting with /`},
		{"header_instance", Upstreams{HeaderInstance: "X Cx"}, `header_instance: "X Cx" is not a valid header name`},
		{"scheme", Upstreams{Scheme: "ftp"}, `scheme "ftp": allowed are http (the default) and https`},
		{"priority id", Upstreams{Priority: map[string]int{"app.1": 0}}, `priority: "app.1" is not an instance id`},
		{"priority value", Upstreams{Priority: map[string]int{"app1": -2000}}, "priority app1 -2000: use -1000 to 1000"},
		{"max_instances", Upstreams{MaxInstances: -1}, "max_instances -1 must not be negative"},
		{"rise", Upstreams{Rise: -1}, "rise -1 must not be negative"},
		{"flap_limit", Upstreams{FlapLimit: -1}, "flap_limit -1 must not be negative"},
		{"stale_after", Upstreams{StaleAfter: neg}, "stale_after must not be negative"},
		{"forget_after", Upstreams{ForgetAfter: neg}, "forget_after must not be negative"},
		{"fail_timeout", Upstreams{FailTimeout: neg}, "fail_timeout must not be negative"},
		{"flap_window", Upstreams{FlapWindow: neg}, "flap_window must not be negative"},
		{"flap_hold", Upstreams{FlapHold: neg}, "flap_hold must not be negative"},
		{"slow_start", Upstreams{SlowStart: neg}, "slow_start must not be negative"},
		{"failback_delay", Upstreams{FailbackDelay: neg}, "failback_delay must not be negative"},
		{"clock_skew", Upstreams{ClockSkew: neg}, "clock_skew must not be negative"},
		{"allow_networks", Upstreams{AllowNetworks: []string{"10.0.0.1"}}, `allow_networks: "10.0.0.1" is not a CIDR network like 10.0.0.0/8`},
		{"allow_ids", Upstreams{AllowIDs: []string{"[a"}}, `allow_ids: "[a" is not a valid glob`},
		{"priority_range ends", Upstreams{PriorityRange: &PriorityRange{Min: -1001, Max: 0}}, "both ends must be within -1000 to 1000"},
		{"priority_range order", Upstreams{PriorityRange: &PriorityRange{Min: 5, Max: 1}}, "give the lower end first, like priority_range 1 5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.u.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v; want an error saying %q", err, c.want)
			}
			if _, err := c.u.config(); err == nil {
				t.Fatal("config accepted what Validate refuses")
			}
		})
	}
}
