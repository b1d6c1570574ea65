package deploy

import (
	"bufio"
	"encoding/json"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"gopkg.in/yaml.v3"

	_ "github.com/caddy-cx/caddy-cx/caddymodule"
	"github.com/caddy-cx/caddy-cx/internal/announce"
)

// goMod returns go.mod's module path, go version and Caddy version.
func goMod(t *testing.T) (module, goVersion, caddyVersion string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(read(t, "../go.mod")))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "module":
			module = f[1]
		case len(f) == 2 && f[0] == "go":
			goVersion = f[1]
		case len(f) >= 2 && f[0] == "github.com/caddyserver/caddy/v2":
			caddyVersion = f[1]
		}
	}
	if module == "" || goVersion == "" || caddyVersion == "" {
		t.Fatalf("go.mod: module %q, go %q, caddy %q", module, goVersion, caddyVersion)
	}
	return module, goVersion, caddyVersion
}

// service is what the test reads of a compose service.
type service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	DependsOn   map[string]any    `yaml:"depends_on"`
}

// composeFile is what the test reads of docker-compose.yml.
type composeFile struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
	Networks struct {
		Default struct {
			IPAM struct {
				Config []struct {
					Subnet string `yaml:"subnet"`
				} `yaml:"config"`
			} `yaml:"ipam"`
		} `yaml:"default"`
	} `yaml:"networks"`
}

func composeAll(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal([]byte(read(t, "../docker-compose.yml")), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

func compose(t *testing.T) map[string]service {
	t.Helper()
	return composeAll(t).Services
}

// TestCompose checks docker-compose.yml against the files it uses: the
// services it names exist, caddy-cx is built from this repository's
// Dockerfile, the gateway's Caddyfile is valid and points at the nats
// service, and each sidecar's settings are valid and name its app.
func TestCompose(t *testing.T) {
	services := compose(t)
	for _, name := range []string{"app1", "app2", "app1-announce", "app2-announce", "db", "nats", "gateway"} {
		if _, ok := services[name]; !ok {
			t.Errorf("no service %s", name)
		}
	}
	for name, s := range services {
		for dep := range s.DependsOn {
			if _, ok := services[dep]; !ok {
				t.Errorf("%s depends on %s, which is not a service", name, dep)
			}
		}
	}
	gw := services["gateway"]
	checkBuild(t, "gateway", gw)
	if !slices.Contains(gw.Ports, "80:80") {
		t.Errorf("gateway ports %v, want 80:80 as nginx had", gw.Ports)
	}
	caddyfile := mountedCaddyfile(t, gw)
	checkCaddyfile(t, caddyfile, services)
	for _, app := range []string{"app1", "app2"} {
		checkSidecar(t, app, services)
	}
}

func checkBuild(t *testing.T, name string, s service) {
	t.Helper()
	if s.Build != "." {
		t.Errorf("%s: build %v, want the repository (.)", name, s.Build)
	}
	if s.Image != "caddy-cx:local" {
		t.Errorf("%s: image %q, want caddy-cx:local", name, s.Image)
	}
}

// mountedCaddyfile returns the host file mounted at the path the
// Dockerfile's CMD runs.
func mountedCaddyfile(t *testing.T, gw service) string {
	t.Helper()
	const target = "/etc/caddy/Caddyfile"
	if !strings.Contains(read(t, "../Dockerfile"), `"--config", "`+target+`"`) {
		t.Errorf("Dockerfile does not run %s", target)
	}
	for _, v := range gw.Volumes {
		if parts := strings.Split(v, ":"); len(parts) >= 2 && parts[1] == target {
			if !fileExists("../" + parts[0]) {
				t.Fatalf("gateway mounts %s, which does not exist", parts[0])
			}
			return "../" + parts[0]
		}
	}
	t.Fatalf("gateway mounts nothing at %s", target)
	return ""
}

// checkCaddyfile adapts the Caddyfile with this build's modules and checks
// the NATS servers and priorities name compose services.
func checkCaddyfile(t *testing.T, path string, services map[string]service) {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(read(t, path)), nil)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var parsed struct {
		Apps struct {
			CX struct {
				NATS []string `json:"nats"`
			} `json:"cx"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &parsed); err != nil {
		t.Fatal(err)
	}
	if len(parsed.Apps.CX.NATS) == 0 {
		t.Fatalf("%s: no nats servers", path)
	}
	for _, u := range parsed.Apps.CX.NATS {
		checkNATSURL(t, path, u, services)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*priority (\S+) \d+`).FindAllStringSubmatch(read(t, path), -1) {
		if _, ok := services[m[1]]; !ok {
			t.Errorf("%s: priority for %s, which is not a service", path, m[1])
		}
	}
}

func checkNATSURL(t *testing.T, where, raw string, services map[string]service) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, raw, err)
	}
	if _, ok := services[u.Hostname()]; !ok || u.Port() != "4222" {
		t.Errorf("%s: NATS %q is not the compose nats service on 4222", where, raw)
	}
}

// checkSidecar: app's sidecar runs `announce` from the caddy-cx image with
// valid settings that point at app and at the NATS the app uses.
func checkSidecar(t *testing.T, app string, services map[string]service) {
	t.Helper()
	name := app + "-announce"
	s := services[name]
	checkBuild(t, name, s)
	if len(s.Command) == 0 || s.Command[0] != "announce" {
		t.Errorf("%s: command %v, want announce", name, s.Command)
	}
	cfg, err := announce.Parse(nil, func(k string) string { return s.Environment[k] }, &strings.Builder{})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	u, _ := url.Parse(cfg.URL)
	if cfg.ID != app || u.Hostname() != app {
		t.Errorf("%s announces id %q url %q; want %s's", name, cfg.ID, cfg.URL, app)
	}
	checkNATSURL(t, name, cfg.NATS, services)
	appNATS := composeURL(t, app+": Nats__Url", services[app].Environment["Nats__Url"])
	if sidecarNATS, _ := url.Parse(cfg.NATS); appNATS.Host != sidecarNATS.Host {
		t.Errorf("%s: CX_NATS %q, but %s uses %s", name, cfg.NATS, app, appNATS.Host)
	}
	if _, ok := s.DependsOn["nats"]; !ok {
		t.Errorf("%s does not depend on nats", name)
	}
}

// TestDockerfile: the image builds ./cmd/caddy-cx with the Go of go.mod.
func TestDockerfile(t *testing.T) {
	_, goVersion, _ := goMod(t)
	df := read(t, "../Dockerfile")
	minor := strings.Join(strings.Split(goVersion, ".")[:2], ".")
	if !strings.Contains(df, "FROM golang:"+minor) {
		t.Errorf("Dockerfile does not build with Go %s (go.mod)", minor)
	}
	if !strings.Contains(df, "./cmd/caddy-cx") || !fileExists("../cmd/caddy-cx/main.go") {
		t.Error("Dockerfile does not build ./cmd/caddy-cx")
	}
	if !strings.Contains(df, `ENTRYPOINT ["caddy-cx"]`) {
		t.Error(`Dockerfile's entrypoint is not caddy-cx, which the compose sidecars' command ["announce"] relies on`)
	}
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}
