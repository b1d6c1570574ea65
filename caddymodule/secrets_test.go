package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// loggedGateway loads a gateway whose Caddy log goes to a file, with the
// given cx block, and returns the log file's path and the site's URL.
func loggedGateway(t *testing.T, cxBlock string) (string, string) {
	t.Helper()
	return loggedGatewaySite(t, cxBlock, "cx_proxy")
}

// loggedGatewaySite is loggedGateway with the site's directives.
func loggedGatewaySite(t *testing.T, cxBlock, site string) (string, string) {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n\tcx {\n%s\n\t}\n}\nhttp://127.0.0.1:%d {\n\t%s\n}\n",
		logFile, cxBlock, port, site))
	t.Cleanup(func() { _ = caddy.Stop() })
	return logFile, fmt.Sprintf("http://127.0.0.1:%d", port)
}

// logHas polls the log file until it contains want, and returns it.
func logHas(t *testing.T, file, want string) string {
	t.Helper()
	var out string
	eventually(t, 5*time.Second, func() bool {
		b, _ := os.ReadFile(file)
		out = string(b)
		return strings.Contains(out, want)
	}, fmt.Sprintf("%q in the log", want))
	return out
}

// TestGatewayLogsNoNATSSecret: the user info of a NATS url (a password,
// or a token in the user position, which nats.go's own redaction keeps)
// appears in no log line, whether the connection is refused or made.
func TestGatewayLogsNoNATSSecret(t *testing.T) {
	tests := []struct {
		name, secret, userinfo, want string
		server                       server.Options
	}{
		{"wrong password", "Wr0ngPassw0rd", "gw:Wr0ngPassw0rd", "cannot connect to NATS", server.Options{Username: "gw", Password: "right"}},
		{"token in url", "T0kenInUrl", "T0kenInUrl", "connected to NATS", server.Options{Authorization: "T0kenInUrl"}},
		{"password in url", "R1ghtPassw0rd", "gw:R1ghtPassw0rd", "connected to NATS", server.Options{Username: "gw", Password: "R1ghtPassw0rd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := strings.Replace(secureNATS(t, &tt.server), "nats://", "nats://"+tt.userinfo+"@", 1)
			logFile, _ := loggedGateway(t, "\t\tnats "+url)
			out := logHas(t, logFile, tt.want)
			if strings.Contains(out, tt.secret) {
				t.Fatalf("the log holds the secret %q:\n%s", tt.secret, out)
			}
			if !strings.Contains(out, "xxxxx@") {
				t.Fatalf("the log does not show the redacted url:\n%s", out)
			}
		})
	}
}

// TestConfigErrorNoNATSSecret: a malformed NATS url is refused with an
// error that does not repeat its password.
func TestConfigErrorNoNATSSecret(t *testing.T) {
	for _, u := range []string{"nats://gw:Se cret@127.0.0.1:4222", "http://gw:S3cret@127.0.0.1:4222"} {
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats \"%s\"\n\t}\n}\n", u)), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = caddy.Load(cfg, true)
		_ = caddy.Stop()
		if err == nil || strings.Contains(err.Error(), "cret") {
			t.Fatalf("nats %q: error %v", u, err)
		}
		t.Log(err)
	}
}

// TestSecretPlaceholders: token, password, nkey and credentials take
// {env.*} and {file.*} placeholders, resolved at load against a real
// nats-server that requires them, while the config the admin API serves
// holds only the placeholders.
func TestSecretPlaceholders(t *testing.T) {
	const token, password = "EnvT0kenValue", "F1lePasswordValue"
	secretFile := filepath.Join(t.TempDir(), "nats_password")
	if err := os.WriteFile(secretFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CX_TEST_NATS_TOKEN", token)
	tests := []struct {
		name, cx, secret string
		server           server.Options
		pub              nats.Option
	}{
		{"env token", "token {env.CX_TEST_NATS_TOKEN}", token, server.Options{Authorization: token}, nats.Token(token)},
		{"file password", "user gw {file." + secretFile + "}", password, server.Options{Username: "gw", Password: password}, nats.UserInfo("gw", password)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := secureNATS(t, &tt.server)
			adminPort, port := freePort(t), freePort(t)
			loadCaddyfile(t, fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t\t%s\n\t}\n}\nhttp://127.0.0.1:%d {\n\tcx_proxy\n}\n",
				adminPort, url, tt.cx, port))
			t.Cleanup(func() { _ = caddy.Stop() })
			nc, err := nats.Connect(url, tt.pub)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			app := startBackend(t, "app1")
			inst := newInstance(t, nc, "app1", app.url, 0)
			inst.beat(heartbeat.StateReady)
			stop := inst.keepBeating()
			t.Cleanup(stop)
			servedBy(t, fmt.Sprintf("http://127.0.0.1:%d", port), "app1", 5*time.Second)

			var config string
			eventually(t, 5*time.Second, func() bool {
				resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/config/", adminPort))
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				config = string(b)
				return resp.StatusCode == http.StatusOK
			}, "GET /config/")
			if strings.Contains(config, tt.secret) {
				t.Fatalf("GET /config/ holds the secret:\n%s", config)
			}
			if !strings.Contains(config, "{env.") && !strings.Contains(config, "{file.") {
				t.Fatalf("GET /config/ does not hold the placeholder:\n%s", config)
			}
		})
	}
}

// TestEmptyPlaceholderRefused: a placeholder that resolves to nothing is
// an error that names it (and no secret).
func TestEmptyPlaceholderRefused(t *testing.T) {
	for _, cx := range []string{"token {env.CX_TEST_UNSET_VARIABLE}", "user gw {file./nonexistent/cx/secret}", "token {unknown.placeholder}"} {
		cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tnats nats://127.0.0.1:1\n\t\t%s\n\t}\n}\n", cx)), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = caddy.Load(cfg, true)
		_ = caddy.Stop()
		placeholder := cx[strings.Index(cx, "{"):]
		if err == nil || !strings.Contains(err.Error(), placeholder) {
			t.Fatalf("%s: error %v, want one naming %s", cx, err, placeholder)
		}
	}
}

// TestLinkKeyHoldsNoSecret: the connection pool key is a hash.
func TestLinkKeyHoldsNoSecret(t *testing.T) {
	url := secureNATS(t, &server.Options{Authorization: "PoolKeyT0ken"})
	routedThrough(t, "\t\tnats "+url+"\n\t\ttoken PoolKeyT0ken", url, nats.Token("PoolKeyT0ken"))
	linkPool.Range(func(k, _ any) bool {
		if strings.Contains(fmt.Sprint(k), "PoolKeyT0ken") {
			t.Errorf("link pool key holds the token: %v", k)
		}
		return true
	})
	servicePool.Range(func(k, _ any) bool {
		if strings.Contains(fmt.Sprint(k), "PoolKeyT0ken") {
			t.Errorf("service pool key holds the token: %v", k)
		}
		return true
	})
}

// TestEmbeddedOffLoopbackNeedsAuth: the embedded NATS server refuses an
// address beyond loopback without authentication, and with a token it
// requires the token of every client (the gateway connects with it).
func TestEmbeddedOffLoopbackNeedsAuth(t *testing.T) {
	port := freePort(t)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tembedded_nats 0.0.0.0:%d\n\t}\n}\n", port)), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(cfg, true)
	_ = caddy.Stop()
	if err == nil || !strings.Contains(err.Error(), "no authentication") || !strings.Contains(err.Error(), "token") {
		t.Fatalf("embedded_nats 0.0.0.0 without auth: error %v", err)
	}

	// With a token, on the loopback address of the test (0.0.0.0 is not
	// listened on in tests): the server requires it.
	t.Setenv("CX_TEST_EMBEDDED_TOKEN", "EmbT0ken")
	site := freePort(t)
	loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tembedded_nats 127.0.0.1:%d\n\t\ttoken {env.CX_TEST_EMBEDDED_TOKEN}\n\t}\n}\nhttp://127.0.0.1:%d {\n\tcx_proxy\n}\n", port, site))
	t.Cleanup(func() { _ = caddy.Stop() })
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("the embedded server accepted a client without the token")
	}
	nc, err := nats.Connect(url, nats.Token("EmbT0ken"))
	if err != nil {
		t.Fatalf("the embedded server refused the token: %v", err)
	}
	t.Cleanup(nc.Close)
	app := startBackend(t, "app1")
	inst := newInstance(t, nc, "app1", app.url, 0)
	inst.beat(heartbeat.StateReady)
	stop := inst.keepBeating()
	t.Cleanup(stop)
	servedBy(t, fmt.Sprintf("http://127.0.0.1:%d", site), "app1", 5*time.Second)
}

func TestEmbeddedAuthChoices(t *testing.T) {
	for _, tt := range []struct {
		addr, auth, want string
	}{
		{"0.0.0.0:4222", "", "no authentication"},
		{"[::]:4222", "", "no authentication"},
		{"10.1.2.3:4222", "", "no authentication"},
		{"0.0.0.0:4222", "nkey /x/seed.nk", "embedded NATS server takes `token`"},
		{"127.0.0.1:4222", "credentials /x/a.creds", "embedded NATS server takes `token`"},
		{"0.0.0.0:4222", "token t", ""},
		{"0.0.0.0:4222", "user u p", ""},
		{"127.0.0.1:4222", "", ""},
		{"localhost:4222", "", ""},
		{"[::1]:4222", "", ""},
	} {
		a := &App{EmbeddedNATS: tt.addr}
		if tt.auth != "" {
			f := strings.Fields(tt.auth)
			switch f[0] {
			case "nkey":
				a.NKey = f[1]
			case "credentials":
				a.Credentials = f[1]
			case "token":
				a.Token = f[1]
			case "user":
				a.User, a.Password = f[1], f[2]
			}
		}
		a.auth = natsAuth{Auth: a.Auth}
		err := a.validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s %q: error %v, want %q", tt.addr, tt.auth, err, tt.want)
		}
	}
}

// TestNkeyPathPlaceholder: the nkey seed file's path comes from the
// environment.
func TestNkeyPathPlaceholder(t *testing.T) {
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	url := secureNATS(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	seed, _ := kp.Seed()
	seedFile := natstest.WriteFile(t, "gw.nk", seed)
	t.Setenv("CX_TEST_NKEY_FILE", seedFile)
	opt, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		t.Fatal(err)
	}
	routedThrough(t, "\t\tnats "+url+"\n\t\tnkey {env.CX_TEST_NKEY_FILE}", url, opt)
}

// TestEmbeddedTokenChangedOnReload: a reload with another token makes the
// running embedded server require the new one.
func TestEmbeddedTokenChangedOnReload(t *testing.T) {
	port, site := freePort(t), freePort(t)
	load := func(token string) {
		loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tcx {\n\t\tembedded_nats 127.0.0.1:%d\n\t\ttoken %s\n\t}\n}\nhttp://127.0.0.1:%d {\n\tcx_proxy\n}\n", port, token, site))
	}
	load("FirstT0ken")
	t.Cleanup(func() { _ = caddy.Stop() })
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	accepts := func(token string) bool {
		nc, err := nats.Connect(url, nats.Token(token))
		if err == nil {
			nc.Close()
		}
		return err == nil
	}
	if !accepts("FirstT0ken") {
		t.Fatal("first token refused")
	}
	load("SecondT0ken")
	if accepts("FirstT0ken") || !accepts("SecondT0ken") {
		t.Fatalf("after the reload: first accepted %v, second accepted %v", accepts("FirstT0ken"), accepts("SecondT0ken"))
	}
	app := startBackend(t, "app1")
	nc, err := nats.Connect(url, nats.Token("SecondT0ken"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	inst := newInstance(t, nc, "app1", app.url, 0)
	inst.beat(heartbeat.StateReady)
	stop := inst.keepBeating()
	t.Cleanup(stop)
	servedBy(t, fmt.Sprintf("http://127.0.0.1:%d", site), "app1", 5*time.Second)
}

// TestAppJSONNamesUnchanged: the NATS settings shared with the sidecar
// sit inline in the app's JSON under the names configs already use.
func TestAppJSONNamesUnchanged(t *testing.T) {
	in := `{"nats":["nats://127.0.0.1:4222"],"credentials":"c.creds","token":"{env.T}","user":"u","password":"p","nkey":"k.nk","tls":{"ca":"ca.pem","cert":"c.pem","key":"k.pem"}}`
	var a App
	if err := caddy.StrictUnmarshalJSON([]byte(in), &a); err != nil {
		t.Fatal(err)
	}
	if a.Credentials != "c.creds" || a.Token != "{env.T}" || a.User != "u" || a.Password != "p" || a.NKey != "k.nk" ||
		a.TLS == nil || a.TLS.CA != "ca.pem" || a.TLS.Cert != "c.pem" || a.TLS.Key != "k.pem" {
		t.Fatalf("decoded %+v", a.Auth)
	}
	out, err := json.Marshal(&a)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Fatalf("encoded\n%s\nwant\n%s", out, in)
	}
}
