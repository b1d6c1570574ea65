package deploy

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"gopkg.in/yaml.v3"

	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// The operating side of docker-compose.yml and the Dockerfile: health
// checks, pinned images, the Prometheus scrape and what each port exposes.

// opsService is what these tests read of a compose service beyond
// service (files_test.go).
type opsService struct {
	Image       string         `yaml:"image"`
	Command     []string       `yaml:"command"`
	Volumes     []string       `yaml:"volumes"`
	Ports       []string       `yaml:"ports"`
	DependsOn   map[string]any `yaml:"depends_on"`
	Healthcheck *struct {
		Test    []string `yaml:"test"`
		Disable bool     `yaml:"disable"`
	} `yaml:"healthcheck"`
}

func opsServices(t *testing.T) map[string]opsService {
	t.Helper()
	var c struct {
		Services map[string]opsService `yaml:"services"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "../docker-compose.yml")), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c.Services
}

// composeEnv is every variable docker-compose.yml requires, set to a
// harmless value, so that compose itself can interpolate the file.
func composeEnv(t *testing.T) []string {
	t.Helper()
	env := os.Environ()
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$\{([A-Z0-9_]+):\?`).FindAllStringSubmatch(read(t, "../docker-compose.yml"), -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			env = append(env, m[1]+"=test-"+strings.ToLower(m[1]))
		}
	}
	if len(seen) == 0 {
		t.Fatal("docker-compose.yml requires no variable; its secrets must come from .env")
	}
	return env
}

// TestComposeConfig validates docker-compose.yml as `docker compose
// config` does, with compose-go, the library compose itself loads files
// with: the compose schema, interpolation of the required variables and
// the references between services, volumes and networks. Where the docker
// compose plugin is installed, it runs too.
func TestComposeConfig(t *testing.T) {
	env := composeEnv(t)
	load := func(env []string) (*types.Project, error) {
		m := types.Mapping{}
		for _, kv := range env {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k] = v
			}
		}
		abs, err := filepath.Abs("..")
		if err != nil {
			t.Fatal(err)
		}
		return loader.LoadWithContext(context.Background(), types.ConfigDetails{
			WorkingDir:  abs,
			ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(abs, "docker-compose.yml"), Content: []byte(read(t, "../docker-compose.yml"))}},
			Environment: m,
		}, func(o *loader.Options) { o.SetProjectName("caddy-cx", true) })
	}
	p, err := load(env)
	if err != nil {
		t.Fatalf("docker-compose.yml (compose-go): %v", err)
	}
	if gw, err := p.GetService("gateway"); err != nil || gw.HealthCheck == nil || len(gw.HealthCheck.Test) == 0 {
		t.Errorf("compose-go sees no gateway health check (%v)", err)
	}
	// Without the secrets compose must refuse, not start with empty ones.
	if _, err := load(nil); err == nil || !strings.Contains(err.Error(), "in .env") {
		t.Errorf("docker-compose.yml without .env: %v, want a refusal naming the variable", err)
	}

	if exec.Command("docker", "compose", "version").Run() != nil {
		t.Log("no `docker compose` here: compose-go's validation only")
		return
	}
	cmd := exec.Command("docker", "compose", "-f", "docker-compose.yml", "config", "--quiet")
	cmd.Dir = ".."
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker compose config: %v\n%s", err, out)
	}
}

// TestComposeHealthchecks: every long-running service has a health check
// (the sidecars, which have no endpoint, switch the image's off) and
// services wait for NATS to be healthy, not merely started.
func TestComposeHealthchecks(t *testing.T) {
	services := opsServices(t)
	for _, name := range []string{"gateway", "nats", "db", "prometheus"} {
		s, ok := services[name]
		if !ok {
			t.Errorf("no service %s", name)
			continue
		}
		if s.Healthcheck == nil || s.Healthcheck.Disable || len(s.Healthcheck.Test) < 2 {
			t.Errorf("%s: no health check", name)
		}
	}
	for _, name := range []string{"app1-announce", "app2-announce"} {
		if hc := services[name].Healthcheck; hc == nil || !hc.Disable {
			t.Errorf("%s: the image's check asks the gateway's admin API, which announce does not run: disable it", name)
		}
	}
	for name, s := range services {
		if dep, ok := s.DependsOn["nats"]; ok {
			if cond, _ := dep.(map[string]any)["condition"].(string); cond != "service_healthy" {
				t.Errorf("%s waits for nats with condition %q, want service_healthy", name, cond)
			}
		}
	}
	hc := services["gateway"].Healthcheck
	if hc == nil || !slices.Contains(hc.Test, "http://"+adminAddr(t, "Caddyfile")+"/config/") {
		t.Errorf("gateway health check %v does not ask the admin API at %s", hc, adminAddr(t, "Caddyfile"))
	}
}

// TestComposeImagesPinned: every image pulled has a tag, and none is
// latest: a pull must not change what runs.
func TestComposeImagesPinned(t *testing.T) {
	for name, s := range opsServices(t) {
		if s.Image == "" {
			t.Errorf("%s: no image", name)
			continue
		}
		img := regexp.MustCompile(`\$\{([A-Z0-9_]+):\?[^}]*\}`).ReplaceAllString(s.Image, "$1")
		i := strings.LastIndex(img, ":")
		if i < 0 || strings.Contains(img[i:], "/") {
			t.Errorf("%s: image %q has no tag", name, s.Image)
			continue
		}
		if tag := img[i+1:]; tag == "latest" || tag == "" {
			t.Errorf("%s: image %q is not pinned", name, s.Image)
		}
	}
}

// adminAddr is where the admin API of a Caddyfile listens, with the
// Host header Caddy accepts from a local client.
func adminAddr(t *testing.T, file string) string {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(read(t, file)), map[string]any{"filename": file})
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var c struct {
		Admin struct {
			Listen   string `json:"listen"`
			Disabled bool   `json:"disabled"`
		} `json:"admin"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	if c.Admin.Disabled {
		t.Fatalf("%s: admin API off; the image's health check needs it", file)
	}
	if c.Admin.Listen != "" && c.Admin.Listen != caddy.DefaultAdminListen {
		t.Fatalf("%s: admin API on %s; keep it on %s (it can rewrite the config)", file, c.Admin.Listen, caddy.DefaultAdminListen)
	}
	_, port, _ := net.SplitHostPort(caddy.DefaultAdminListen)
	return "127.0.0.1:" + port
}

// TestComposeNATSConfig starts nats-server with deploy/nats/compose.conf,
// the file the compose service loads: it has exactly the users of
// permissions.conf (and passes the same proof), and its monitoring
// endpoint, which the health check asks, listens on loopback only.
func TestComposeNATSConfig(t *testing.T) {
	setStaticPasswords(t)
	opts, err := server.ProcessConfigFile("nats/compose.conf")
	if err != nil {
		t.Fatalf("nats/compose.conf: %v", err)
	}
	users := natsUsers(t)
	var got []string
	for _, u := range opts.Users {
		got = append(got, u.Username)
		if p := users[u.Username]; p == nil || !slices.Equal(p.Publish.Allow, u.Permissions.Publish.Allow) {
			t.Errorf("compose.conf user %s differs from permissions.conf", u.Username)
		}
	}
	if len(got) != len(users) {
		t.Errorf("compose.conf users %v, permissions.conf has %d", got, len(users))
	}
	if opts.HTTPHost != "127.0.0.1" || opts.HTTPPort != 8222 {
		t.Errorf("monitoring on %s:%d, want 127.0.0.1:8222 (loopback: it lists connections and subjects)", opts.HTTPHost, opts.HTTPPort)
	}
	hc := opsServices(t)["nats"].Healthcheck
	if hc == nil || !slices.Contains(hc.Test, "http://127.0.0.1:8222/healthz") {
		t.Errorf("nats health check %v does not ask the monitoring port's /healthz", hc)
	}

	if !opts.JetStream {
		t.Error("compose.conf runs without JetStream: the gateway's drain and maintenance need it")
	}
	opts.Port, opts.HTTPPort, opts.StoreDir = -1, -1, t.TempDir()
	s := natstest.Start(t, opts)
	if code, body := get(t, "http://"+s.MonitorAddr().String()+"/healthz"); code != http.StatusOK {
		t.Errorf("NATS /healthz: %d %s", code, body)
	}
	provePermissions(t, parties{
		app1:    connectAs(t, s, "app1", "app1-pw"),
		app2:    connectAs(t, s, "app2", "app2-pw"),
		gateway: connectAs(t, s, "gateway", "gateway-pw"),
		app:     connectAs(t, s, "app", "app-pw"),
	})
}

// prometheusConfig is what the tests read of deploy/prometheus/prometheus.yml.
type prometheusConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		HonorLabels   bool   `yaml:"honor_labels"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// TestComposePrometheus: the compose Prometheus loads the shipped
// prometheus.yml and rules, and scrapes the gateway's metrics site, which
// the compose file does not publish; the admin API is never a target.
func TestComposePrometheus(t *testing.T) {
	services := opsServices(t)
	prom, ok := services["prometheus"]
	if !ok {
		t.Fatal("no prometheus service")
	}
	mounts := map[string]string{} // container path -> repository file
	for _, v := range prom.Volumes {
		if p := strings.Split(v, ":"); len(p) >= 2 && strings.HasPrefix(p[0], "./") {
			if !fileExists("../" + p[0]) {
				t.Errorf("prometheus mounts %s, which does not exist", p[0])
			}
			mounts[p[1]] = p[0]
		}
	}
	if mounts["/etc/prometheus/prometheus.yml"] != "./deploy/prometheus/prometheus.yml" ||
		!slices.Contains(prom.Command, "--config.file=/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus: volumes %v command %v, want deploy/prometheus/prometheus.yml loaded", prom.Volumes, prom.Command)
	}
	var cfg prometheusConfig
	dec := yaml.NewDecoder(strings.NewReader(read(t, "prometheus/prometheus.yml")))
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("prometheus/prometheus.yml: %v", err)
	}
	for _, f := range cfg.RuleFiles {
		if mounts[f] == "" {
			t.Errorf("prometheus.yml loads rules %s, which the compose service does not mount", f)
		}
	}
	if len(cfg.RuleFiles) == 0 {
		t.Error("prometheus.yml loads no alert rules")
	}

	metricsPorts := metricsSites(t, "Caddyfile")
	var targets int
	for _, sc := range cfg.ScrapeConfigs {
		if sc.HonorLabels {
			t.Errorf("job %s: honor_labels would let a target's labels overwrite which gateway a series came from", sc.JobName)
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				targets++
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					t.Errorf("target %q: %v", target, err)
					continue
				}
				if _, ok := services[host]; !ok || host != "gateway" {
					t.Errorf("target %q is not the compose gateway", target)
				}
				if path := metricsPorts[port]; path == "" || path != sc.MetricsPath {
					t.Errorf("target %s%s: deploy/Caddyfile serves metrics on %v (port: path)", target, sc.MetricsPath, metricsPorts)
				}
				for _, p := range services["gateway"].Ports {
					if strings.HasSuffix(p, ":"+port) {
						t.Errorf("gateway publishes the metrics port (%s): only the compose network needs it", p)
					}
				}
			}
		}
	}
	if targets == 0 {
		t.Error("prometheus.yml scrapes nothing")
	}
	for _, p := range prom.Ports {
		if !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("prometheus publishes %s beyond this machine: its UI and API have no authentication", p)
		}
	}
}

// metricsSites maps each port of a Caddyfile's sites that serves Caddy's
// metrics handler to the path it is served on.
func metricsSites(t *testing.T, file string) map[string]string {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(read(t, file)), map[string]any{"filename": file})
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var c struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string          `json:"listen"`
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	sites := map[string]string{}
	for _, srv := range c.Apps.HTTP.Servers {
		for _, r := range srv.Routes {
			var route struct {
				Match []struct {
					Path []string `json:"path"`
				} `json:"match"`
			}
			_ = json.Unmarshal(r, &route)
			if !strings.Contains(string(r), `"handler":"metrics"`) || len(route.Match) != 1 || len(route.Match[0].Path) != 1 {
				continue
			}
			for _, l := range srv.Listen {
				_, port, _ := net.SplitHostPort(l)
				sites[port] = route.Match[0].Path[0]
			}
		}
	}
	if len(sites) == 0 {
		t.Fatalf("%s serves no metrics site", file)
	}
	return sites
}

// TestGatewayMetricsSite runs deploy/Caddyfile for real and scrapes its
// metrics site as Prometheus would: the cx metrics are there, /healthz
// answers, and anything else is 404 (the site is no second way in).
func TestGatewayMetricsSite(t *testing.T) {
	ns := natstest.Start(t, nil)
	t.Setenv("CX_GATEWAY_PASSWORD", "gateway-pw")
	t.Setenv("CX_HA_PASSWORD_HASH", testHash)
	servers := startCaddyfile(t, "Caddyfile", ns.ClientURL())
	var site string
	for _, s := range servers {
		if slices.Contains(s.listen, ":9180") {
			site = "http://" + s.addr
		}
	}
	if site == "" {
		t.Fatal("deploy/Caddyfile has no :9180 site")
	}
	code, body := get(t, site+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, "\ncaddy_cx_") {
		t.Errorf("GET /metrics: %d, cx metrics missing:\n%.500s", code, body)
	}
	if code, _ := get(t, site+"/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz: %d", code)
	}
	for _, p := range []string{"/ha", "/config/", "/"} {
		if code, _ := get(t, site+p); code != http.StatusNotFound {
			t.Errorf("GET %s on the metrics site: %d, want 404", p, code)
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startedServer is one HTTP server of a Caddyfile started by
// startCaddyfile: where the file said it listens, and where it does.
type startedServer struct {
	listen     []string
	addr       string
	statusPage bool
}

// startCaddyfile loads file into this process's Caddy with each server on
// its own loopback port, the admin API off and NATS at natsURL, and
// returns its servers once they all accept connections.
func startCaddyfile(t *testing.T, file, natsURL string) map[string]startedServer {
	t.Helper()
	text := read(t, file)
	if strings.Contains(text, "$2a$14$") {
		if !strings.Contains(text, exampleHash) {
			t.Fatalf("%s: a bcrypt hash that is not the documented one of \"secret\"", file)
		}
		text = strings.ReplaceAll(text, exampleHash, testHash)
	}
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), map[string]any{"filename": file})
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["admin"] = map[string]any{"disabled": true, "config": map[string]any{"persist": false}}
	apps := cfg["apps"].(map[string]any)
	apps["cx"].(map[string]any)["nats"] = []string{natsURL}
	servers := map[string]startedServer{}
	for name, raw := range apps["http"].(map[string]any)["servers"].(map[string]any) {
		srv := raw.(map[string]any)
		s := startedServer{addr: freeLoopback(t)}
		for _, l := range srv["listen"].([]any) {
			s.listen = append(s.listen, l.(string))
		}
		routes, _ := json.Marshal(srv["routes"])
		s.statusPage = strings.Contains(string(routes), `"handler":"cx_status"`)
		srv["listen"] = []string{s.addr}
		servers[name] = s
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(out, true); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	for _, s := range servers {
		awaitListening(t, file, s.addr)
	}
	return servers
}

func freeLoopback(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func awaitListening(t *testing.T, file, addr string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not listening on %s: %v", file, addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDockerfileRunsSafely: the image runs as an unprivileged user, says
// how to check it (the admin API where the shipped Caddyfile puts it) and
// carries the OCI labels registries and scanners read.
func TestDockerfileRunsSafely(t *testing.T) {
	df := read(t, "../Dockerfile")
	final := df[strings.LastIndex(df, "\nFROM "):]
	users := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindAllStringSubmatch(final, -1)
	if len(users) == 0 {
		t.Fatal("Dockerfile: the image runs as root (no USER)")
	}
	if u := strings.Split(users[len(users)-1][1], ":")[0]; u == "root" || u == "0" {
		t.Errorf("Dockerfile: USER %s", u)
	}
	hc := regexp.MustCompile(`(?m)^HEALTHCHECK .*\\\n\s*CMD (.*)$`).FindStringSubmatch(final)
	if hc == nil || !strings.Contains(hc[1], "http://"+adminAddr(t, "Caddyfile")+"/config/") {
		t.Errorf("Dockerfile: HEALTHCHECK %v does not ask the admin API", hc)
	}
	for label, want := range map[string]string{
		"title":       `"caddy-cx"`,
		"source":      `"https://github.com/caddy-cx/caddy-cx"`,
		"licenses":    `"Apache-2.0"`,
		"version":     `"${VERSION}"`,
		"description": `"`,
	} {
		if !strings.Contains(final, "org.opencontainers.image."+label+"="+want) {
			t.Errorf("Dockerfile: no label org.opencontainers.image.%s=%s", label, want)
		}
	}
	if !regexp.MustCompile(`(?m)^ARG VERSION=`).MatchString(final) {
		t.Error("Dockerfile: the version label needs ARG VERSION in the final stage")
	}
	if strings.Contains(final, "setcap") {
		t.Error("Dockerfile: a file capability makes the binary fail to start where capabilities are dropped")
	}
}

// TestLicense: the repository is Apache-2.0, as the image label says.
func TestLicense(t *testing.T) {
	l := read(t, "../LICENSE")
	for _, s := range []string{"Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "END OF TERMS AND CONDITIONS"} {
		if !strings.Contains(l, s) {
			t.Errorf("LICENSE lacks %q: not the full Apache-2.0 text", s)
		}
	}
}
