package deploy

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// The examples are safe by default: these tests keep them so.

// passwordVars maps each user of deploy/nats/permissions.conf to the
// environment variable its password comes from.
func passwordVars(t *testing.T) map[string]string {
	t.Helper()
	setStaticPasswords(t)
	opts, err := server.ProcessConfigFile("nats/permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, u := range opts.Users {
		for v, pw := range staticPasswords {
			if u.Password == pw {
				vars[u.Username] = v
			}
		}
		if vars[u.Username] == "" {
			t.Errorf("user %s: password not from one of %v", u.Username, staticPasswords)
		}
	}
	return vars
}

// composeSecret matches a compose value that is exactly one required
// variable: `${NAME:?message}`. No default, so no known password.
var composeSecret = regexp.MustCompile(`^\$\{([A-Z0-9_]+):\?[^}]*\}$`)

// composeURL parses a compose url value as the container sees it, each
// required variable standing as VAR-NAME.
func composeURL(t *testing.T, where, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(regexp.MustCompile(`\$\{([A-Z0-9_]+):\?[^}]*\}`).ReplaceAllString(raw, "VAR-$1"))
	if err != nil {
		t.Fatalf("%s: %q: %v", where, raw, err)
	}
	return u
}

// secretVar returns the variable a compose secret value reads, failing
// when the value is a literal or has a default.
func secretVar(t *testing.T, where, value string) string {
	t.Helper()
	m := composeSecret.FindStringSubmatch(value)
	if m == nil {
		t.Errorf("%s = %q: want ${NAME:?message}, a required variable without a default", where, value)
		return ""
	}
	return m[1]
}

// TestComposeNATSUsers: every NATS connection of docker-compose.yml uses
// its own user of deploy/nats/permissions.conf, the one the NATS service
// loads: each sidecar the instance user of its id (which may publish only
// that id's heartbeats), the gateway the gateway user, the application
// the user that cannot touch cx.ha.>. Passwords are required variables,
// the same ones the NATS service gets.
func TestComposeNATSUsers(t *testing.T) {
	services := compose(t)
	users := natsUsers(t)
	vars := passwordVars(t)

	nats := services["nats"]
	// compose.conf includes permissions.conf (TestComposeNATSConfig).
	if !slices.Contains(nats.Volumes, "./deploy/nats/permissions.conf:/etc/nats/permissions.conf:ro") ||
		!slices.Contains(nats.Volumes, "./deploy/nats/compose.conf:/etc/nats/compose.conf:ro") ||
		!slices.Equal(nats.Command, []string{"--config", "/etc/nats/compose.conf"}) {
		t.Errorf("nats: volumes %v command %v, want deploy/nats/permissions.conf mounted and loaded through compose.conf", nats.Volumes, nats.Command)
	}
	for user, v := range vars {
		if got := secretVar(t, "nats: "+v, nats.Environment[v]); got != v {
			t.Errorf("nats: %s (user %s's password) = %q, want ${%s:?...}", v, user, nats.Environment[v], v)
		}
	}

	for _, id := range []string{"app1", "app2"} {
		name := id + "-announce"
		env := services[name].Environment
		user := env["CX_USER"]
		if user != id || env["CX_ID"] != id {
			t.Errorf("%s: CX_USER %q for CX_ID %q; each instance needs its own user, named as its id", name, user, env["CX_ID"])
		}
		perms, ok := users[user]
		if !ok {
			t.Errorf("%s: NATS user %q is not in deploy/nats/permissions.conf", name, user)
			continue
		}
		if want := []string{"cx.ha.hb." + env["CX_ID"]}; !slices.Equal(perms.Publish.Allow, want) {
			t.Errorf("%s: user %s may publish %v, want only %v", name, user, perms.Publish.Allow, want)
		}
		if got := secretVar(t, name+": CX_PASSWORD", env["CX_PASSWORD"]); got != vars[user] {
			t.Errorf("%s: CX_PASSWORD reads %s, user %s's password is %s", name, got, user, vars[user])
		}
	}

	for _, app := range []string{"app1", "app2"} {
		u := composeURL(t, app+": Nats__Url", services[app].Environment["Nats__Url"])
		pw, _ := u.User.Password()
		perms := users[u.User.Username()]
		if perms == nil || !slices.Contains(perms.Publish.Deny, "cx.ha.>") || !slices.Contains(perms.Subscribe.Deny, "cx.ha.>") {
			t.Errorf("%s: NATS user %q may touch cx.ha.>; the application's own traffic must not", app, u.User.Username())
		}
		if want := "VAR-" + vars[u.User.Username()]; pw != want {
			t.Errorf("%s: Nats__Url password %q, want ${%s:?...}", app, pw, vars[u.User.Username()])
		}
	}

	gw := services["gateway"]
	cx := adaptedCaddyfile(t, mountedCaddyfile(t, gw)).Apps.CX
	perms := users[cx.User]
	if perms == nil || !slices.Contains(perms.Publish.Allow, "cx.ha.discover") || !slices.Contains(perms.Subscribe.Allow, "cx.ha.hb.*") {
		t.Errorf("gateway: NATS user %q is not the gateway user of deploy/nats/permissions.conf", cx.User)
	}
	v := vars[cx.User]
	if cx.Password != "{env."+v+"}" {
		t.Errorf("gateway: password %q, want {env.%s} (read when the config starts, never in the config)", cx.Password, v)
	}
	if got := secretVar(t, "gateway: "+v, gw.Environment[v]); got != v {
		t.Errorf("gateway: %s = %q, want ${%s:?...}", v, gw.Environment[v], v)
	}
}

// TestComposeAllowNetworks: the gateway routes only inside the compose
// network, whose subnet the file pins, and the application trusts
// forwarded headers from that network only.
func TestComposeAllowNetworks(t *testing.T) {
	c := composeAll(t)
	if len(c.Networks.Default.IPAM.Config) != 1 {
		t.Fatalf("docker-compose.yml: default network subnets %+v, want one pinned subnet", c.Networks.Default.IPAM.Config)
	}
	subnet := c.Networks.Default.IPAM.Config[0].Subnet
	cfg := adaptedCaddyfile(t, mountedCaddyfile(t, c.Services["gateway"]))
	var nets [][]string
	for _, srv := range cfg.Apps.HTTP.Servers {
		for _, r := range srv.Routes {
			for _, h := range r.Handle {
				if h.DynamicUpstreams != nil {
					nets = append(nets, h.DynamicUpstreams.AllowNetworks)
				}
			}
		}
	}
	if len(nets) == 0 {
		t.Fatal("deploy/Caddyfile has no cx_proxy")
	}
	for _, n := range nets {
		if !slices.Equal(n, []string{subnet}) {
			t.Errorf("deploy/Caddyfile: allow_networks %v, want the compose network %s", n, subnet)
		}
	}
	for _, app := range []string{"app1", "app2"} {
		if got := c.Services[app].Environment["ForwardedHeaders__KnownNetworks__0"]; got != subnet {
			t.Errorf("%s trusts forwarded headers from %q, want the compose network %s", app, got, subnet)
		}
	}
}

// TestStatusPageBehindAuth: in Caddyfile.example and deploy/Caddyfile
// every cx_status page is answered only after basic_auth has run on its
// path.
func TestStatusPageBehindAuth(t *testing.T) {
	for _, file := range []string{"../Caddyfile.example", "Caddyfile"} {
		cfg := adaptedCaddyfile(t, file)
		pages := 0
		for name, srv := range cfg.Apps.HTTP.Servers {
			var authed []string // path patterns basic_auth covers so far
			for i, r := range srv.Routes {
				paths := r.paths()
				for _, h := range r.Handle {
					switch h.Handler {
					case "authentication":
						if len(paths) == 0 {
							paths = []string{"*"}
						}
						authed = append(authed, paths...)
					case "cx_status":
						pages++
						if len(paths) == 0 {
							paths = []string{"/"}
						}
						for _, p := range paths {
							if !slices.ContainsFunc(authed, func(a string) bool { return covers(a, p) }) {
								t.Errorf("%s: server %s route %d: cx_status at %s without basic_auth before it", file, name, i, p)
							}
						}
					}
				}
			}
		}
		if pages == 0 {
			t.Errorf("%s: no cx_status page", file)
		}
	}
}

// covers reports whether Caddy's path matcher pattern matches every
// request to path p (a prefix pattern ending in * or the same path).
func covers(pattern, p string) bool {
	return pattern == "*" || pattern == p ||
		strings.HasSuffix(pattern, "*") && strings.HasPrefix(p, strings.TrimSuffix(pattern, "*"))
}

// TestDeployCaddyfileNeedsSecrets: deploy/Caddyfile provisions with the
// secrets in the environment (a real bcrypt hash) and refuses to start
// without the /ha password hash, instead of serving /ha without one.
func TestDeployCaddyfileNeedsSecrets(t *testing.T) {
	t.Setenv("CX_GATEWAY_PASSWORD", "gateway-pw")
	t.Setenv("CX_HA_PASSWORD_HASH", testHash)
	if err := validate(t, "Caddyfile"); err != nil {
		t.Fatalf("deploy/Caddyfile with its secrets set: %v", err)
	}
	t.Setenv("CX_HA_PASSWORD_HASH", "")
	if err := validate(t, "Caddyfile"); err == nil || !strings.Contains(err.Error(), "password") {
		t.Errorf("deploy/Caddyfile without CX_HA_PASSWORD_HASH: %v, want a refusal", err)
	}
}

func validate(t *testing.T, file string) error {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(read(t, file)), map[string]any{"filename": file})
	if err != nil {
		t.Fatal(err)
	}
	var parsed caddy.Config
	if err := caddy.StrictUnmarshalJSON(cfg, &parsed); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&parsed)
}

// adapted is what the tests read of an adapted Caddyfile.
type adapted struct {
	Apps struct {
		CX struct {
			NATS     []string `json:"nats"`
			User     string   `json:"user"`
			Password string   `json:"password"`
		} `json:"cx"`
		HTTP struct {
			Servers map[string]struct {
				Routes []route `json:"routes"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}

type route struct {
	Match []struct {
		Path []string `json:"path"`
	} `json:"match"`
	Handle []struct {
		Handler          string `json:"handler"`
		DynamicUpstreams *struct {
			AllowNetworks []string `json:"allow_networks"`
		} `json:"dynamic_upstreams"`
	} `json:"handle"`
}

func (r route) paths() []string {
	var ps []string
	for _, m := range r.Match {
		ps = append(ps, m.Path...)
	}
	return ps
}

func adaptedCaddyfile(t *testing.T, file string) adapted {
	t.Helper()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(read(t, file)), map[string]any{"filename": file})
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var a adapted
	if err := json.Unmarshal(cfg, &a); err != nil {
		t.Fatal(err)
	}
	return a
}

// exampleHash is Caddyfile.example's hash of "secret" (bcrypt, cost 14);
// testHash is the same password's hash at cost 4.
const (
	exampleHash = "$2a$14$uDeWJxNXmqx0xj2EpybSa.Z4lC0PZqQfYhLRKRCCgDJUYVSr75RZ."
	testHash    = "$2a$04$IeWT3PZfUkb/0ftGMKg2o.sGzFQJzw3Eh9IEQjxyLTDAye1r8GIwG"
)

// TestStatusPageAsksForPassword runs Caddyfile.example and deploy/Caddyfile
// for real (their sites moved to a loopback port, NATS a test server):
// /ha, page or JSON, answers 401 without the password and 200 with it.
func TestStatusPageAsksForPassword(t *testing.T) {
	ns := natstest.Start(t, nil)
	t.Setenv("CX_GATEWAY_PASSWORD", "gateway-pw")
	// Both files' /ha password is "secret". Its hash at bcrypt cost 14
	// (Caddyfile.example's) takes seconds per comparison under -race, so
	// the test uses the same password's hash at cost 4.
	t.Setenv("CX_HA_PASSWORD_HASH", testHash)
	tries := []struct {
		accept, user, password string
		want                   int
	}{
		{"text/html", "", "", http.StatusUnauthorized},
		{"application/json", "", "", http.StatusUnauthorized},
		{"application/json", "admin", "wrong", http.StatusUnauthorized},
		{"application/json", "admin", "secret", http.StatusOK},
		{"text/html", "admin", "secret", http.StatusOK},
	}
	for _, file := range []string{"../Caddyfile.example", "Caddyfile"} {
		base := runCaddyfile(t, file, ns.ClientURL())
		for _, c := range tries {
			req, _ := http.NewRequest(http.MethodGet, base+"/ha", nil)
			req.Header.Set("Accept", c.accept)
			if c.user != "" {
				req.SetBasicAuth(c.user, c.password)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s: GET /ha (%s) as %q/%q: %d, want %d", file, c.accept, c.user, c.password, resp.StatusCode, c.want)
			}
		}
		if err := caddy.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// runCaddyfile starts file (startCaddyfile) and returns the base URL of
// the site that serves the status page.
func runCaddyfile(t *testing.T, file, natsURL string) string {
	t.Helper()
	for _, s := range startCaddyfile(t, file, natsURL) {
		if s.statusPage {
			return "http://" + s.addr
		}
	}
	t.Fatalf("%s: no server serves cx_status", file)
	return ""
}
