package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-cx/caddy-cx/internal/announce"
)

// unit is a systemd unit file: section -> key -> values in order (a key
// may repeat; an empty assignment resets it, as systemd does).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(read(t, path)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q is not KEY=VALUE in a section", path, n, line)
			}
			if v == "" {
				u[section][k] = []string{}
				continue
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unit) get(section, key string) string {
	return strings.Join(u[section][key], " ")
}

// TestSystemdVerify runs `systemd-analyze verify` on both units (the
// sidecar as instance app1), with ExecStart's binary replaced by a stub
// so that the check does not need caddy-cx installed. Any complaint fails.
func TestSystemdVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze here; TestSystemdUnits checks the fields")
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "caddy-cx")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"caddy-cx.service", "caddy-cx-announce@.service"} {
		text := strings.ReplaceAll(read(t, "systemd/"+f), "/usr/bin/caddy-cx", stub)
		if err := os.WriteFile(filepath.Join(dir, f), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(analyze, "verify", "--man=no", "./caddy-cx.service", "./caddy-cx-announce@app1.service")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdUnits: the gateway runs as Caddy's own unit runs Caddy
// (user caddy, only CAP_NET_BIND_SERVICE, reload through `caddy-cx
// reload` of the same Caddyfile) and hardened; the sidecar runs one per
// instance from its environment file, with no privilege at all.
func TestSystemdUnits(t *testing.T) {
	gw := parseUnit(t, "systemd/caddy-cx.service")
	s := gw["Service"]
	want := map[string]string{
		"Type":                   "notify",
		"User":                   "caddy",
		"AmbientCapabilities":    "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet":  "CAP_NET_BIND_SERVICE",
		"NoNewPrivileges":        "true",
		"ProtectSystem":          "strict",
		"ProtectHome":            "true",
		"PrivateTmp":             "true",
		"RestrictSUIDSGID":       "true",
		"MemoryDenyWriteExecute": "true",
	}
	for k, v := range want {
		if got := gw.get("Service", k); got != v {
			t.Errorf("caddy-cx.service: %s=%q, want %q", k, got, v)
		}
	}
	start, reload := gw.get("Service", "ExecStart"), gw.get("Service", "ExecReload")
	config := regexp.MustCompile(`--config (\S+)`)
	if !strings.HasPrefix(start, "/usr/bin/caddy-cx run ") || strings.Contains(start, "--environ") {
		t.Errorf("ExecStart %q: want caddy-cx run, without --environ (it would log the secrets)", start)
	}
	if !strings.HasPrefix(reload, "/usr/bin/caddy-cx reload ") || config.FindString(reload) != config.FindString(start) {
		t.Errorf("ExecReload %q does not reload ExecStart's config (%q)", reload, start)
	}
	if len(s["EnvironmentFile"]) == 0 {
		t.Error("caddy-cx.service: no EnvironmentFile for the Caddyfile's {env.*} secrets")
	}
	if !strings.Contains(gw.get("Install", "WantedBy"), "multi-user.target") {
		t.Error("caddy-cx.service is not wanted by multi-user.target")
	}

	sc := parseUnit(t, "systemd/caddy-cx-announce@.service")
	if got := sc.get("Service", "EnvironmentFile"); got != "/etc/caddy-cx/announce-%i.env" {
		t.Errorf("sidecar EnvironmentFile %q, want /etc/caddy-cx/announce-%%i.env", got)
	}
	if got := sc.get("Service", "ExecStart"); got != "/usr/bin/caddy-cx announce" {
		t.Errorf("sidecar ExecStart %q, want caddy-cx announce configured by CX_* variables", got)
	}
	if !slices.Contains(sc["Service"]["Environment"], "CX_ID=%i") {
		t.Error("sidecar: CX_ID does not default to the instance name")
	}
	for k, v := range map[string]string{"DynamicUser": "true", "CapabilityBoundingSet": "", "NoNewPrivileges": "true", "Restart": "always"} {
		if got, ok := sc["Service"][k]; !ok || strings.Join(got, " ") != v {
			t.Errorf("caddy-cx-announce@.service: %s=%q, want %q", k, strings.Join(got, " "), v)
		}
	}
}

// TestSystemdSidecarExample: the environment file the sidecar unit shows
// gives `caddy-cx announce` valid settings, and names only variables
// announce reads.
func TestSystemdSidecarExample(t *testing.T) {
	env := map[string]string{"CX_ID": "app1"}
	for _, m := range regexp.MustCompile(`(?m)^#\s+(CX_[A-Z_]+)=(.*)$`).FindAllStringSubmatch(read(t, "systemd/caddy-cx-announce@.service"), -1) {
		env[m[1]] = m[2]
	}
	if len(env) < 4 {
		t.Fatalf("the unit shows no environment file (found %v)", env)
	}
	known := read(t, "../internal/announce/config.go")
	for k := range env {
		if !strings.Contains(known, `"`+k+`"`) {
			t.Errorf("the example sets %s, which announce does not read", k)
		}
	}
	cfg, err := announce.Parse(nil, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil {
		t.Fatalf("the example environment file: %v", err)
	}
	if cfg.ID != "app1" || cfg.URL != env["CX_URL"] {
		t.Errorf("announces id %q url %q", cfg.ID, cfg.URL)
	}
}
