package caddymodule

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// These tests reach each option the way users do: a Caddyfile, a running
// gateway, real NATS and real backends; they assert on HTTP answers, the
// status JSON, /metrics and the log.

// runGateway loads a Caddyfile whose global options hold the given cx
// block (none when cxBlock is "-") and one site on port with directives,
// logging JSON to logFile. Calling it again with the same port reloads.
func runGateway(t *testing.T, logFile, cxBlock string, port int, directives string) string {
	t.Helper()
	global := ""
	if cxBlock != "-" {
		global = fmt.Sprintf("\tcx {\n%s\n\t}\n", cxBlock)
	}
	loadCaddyfile(t, fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n%s}\nhttp://127.0.0.1:%d {\n%s\n}\n",
		logFile, global, port, directives))
	t.Cleanup(func() { _ = caddy.Stop() })
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

func logCount(t *testing.T, file, line string) int {
	t.Helper()
	b, _ := os.ReadFile(file)
	return strings.Count(string(b), line)
}

// serviceStatus polls the status JSON at url until the service of prefix
// satisfies cond, and returns it.
func serviceStatus(t *testing.T, url, prefix string, cond func(ServiceStatus) bool, what string) ServiceStatus {
	t.Helper()
	var found ServiceStatus
	eventually(t, 5*time.Second, func() bool {
		rep, _ := fetchReport(t, url, "application/json")
		for _, s := range rep.Services {
			if s.SubjectPrefix == prefix {
				found = s
				return cond(s)
			}
		}
		return false
	}, what)
	return found
}

func instanceStatus(s ServiceStatus, id string) (InstanceStatus, bool) {
	for _, in := range s.Instances {
		if in.ID == id {
			return in, true
		}
	}
	return InstanceStatus{}, false
}

func TestEmbeddedNATSRoutesAndSurvivesReload(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cx := "\t\tembedded_nats " + natsAddr
	port := freePort(t)
	site := "\tcx_proxy {\n\t\tstale_after 10s\n\t}"
	base := runGateway(t, logFile, cx, port, site)

	nc := connect(t, "nats://"+natsAddr)
	app1 := startBackend(t, "app1")
	newInstance(t, nc, "app1", app1.url, 0).beat(heartbeat.StateReady)
	servedBy(t, base, "app1", 2*time.Second)

	runGateway(t, logFile, cx, port, site) // a reload
	// The members are kept (app1 sent nothing since) and the instance's
	// connection to the embedded server never dropped: the same server.
	// (A keep-alive connection to the replaced server may fail once.)
	eventually(t, 2*time.Second, func() bool {
		resp, err := client.Get(base)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200 && resp.Header.Get("X-Instance") == "app1"
	}, "app1 served after the reload without a new heartbeat")
	if !nc.IsConnected() || nc.Stats().Reconnects != 0 {
		t.Fatalf("the instance's NATS connection: connected %v, reconnects %d; the reload must keep the embedded server", nc.IsConnected(), nc.Stats().Reconnects)
	}
	if n := logCount(t, logFile, "embedded NATS server listening"); n != 1 {
		t.Fatalf("the embedded server started %d times over a reload, want once", n)
	}
}

func TestEmbeddedNATSDefaultAddress(t *testing.T) {
	l, err := net.Listen("tcp", DefaultEmbeddedNATS)
	if err != nil {
		t.Skipf("%s is taken on this machine (%v): the default embedded_nats address cannot be tested here", DefaultEmbeddedNATS, err)
	}
	l.Close()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	base := runGateway(t, logFile, "-", freePort(t), "\tcx_proxy {\n\t\tstale_after 10s\n\t}")
	logHas(t, logFile, `"address":"`+DefaultEmbeddedNATS+`"`)
	nc := connect(t, "nats://"+DefaultEmbeddedNATS)
	app1 := startBackend(t, "app1")
	newInstance(t, nc, "app1", app1.url, 0).beat(heartbeat.StateReady)
	servedBy(t, base, "app1", 2*time.Second)
}

func TestNATSUnreachableAtStartThenRoutes(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	natsPort := freePort(t)
	base := runGateway(t, logFile, fmt.Sprintf("\t\tnats nats://127.0.0.1:%d", natsPort), freePort(t), "\tcx_proxy")
	logHas(t, logFile, "cannot connect to NATS at start")
	if _, code := get(t, "GET", base); code != 503 {
		t.Fatalf("without NATS: status %d, want the gateway up and answering 503", code)
	}
	natstest.Start(t, &server.Options{Port: natsPort})
	nc := connect(t, fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	app1 := startBackend(t, "app1")
	i := newInstance(t, nc, "app1", app1.url, 0)
	i.beat(heartbeat.StateReady)
	t.Cleanup(i.keepBeating())
	// reconnect wait 250ms plus up to 1s of jitter
	servedBy(t, base, "app1", 5*time.Second)
	logHas(t, logFile, "connected to NATS")
}

// switchableAuth is a NATS server's authentication that a test can fix
// while the server runs (as an operator's config reload would), counting
// the attempts it refused.
type switchableAuth struct {
	token   atomic.Value // string
	refused atomic.Int32
}

func (a *switchableAuth) Check(c server.ClientAuthentication) bool {
	if c.GetOpts().Token == a.token.Load().(string) {
		return true
	}
	a.refused.Add(1)
	return false
}

func TestNATSAuthErrorIsRetried(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	auth := &switchableAuth{}
	auth.token.Store("old-token")
	natsURL := natstest.Start(t, &server.Options{CustomClientAuthentication: auth}).ClientURL()
	base := runGateway(t, logFile, "\t\tnats "+natsURL+"\n\t\ttoken new-token", freePort(t), "\tcx_proxy")
	logHas(t, logFile, "cannot connect to NATS at start")
	// nats.go gives up after two authentication errors in a row unless
	// told not to: wait for more than that before fixing the server.
	eventually(t, 10*time.Second, func() bool { return auth.refused.Load() >= 3 }, "three refused attempts")
	auth.token.Store("new-token")
	nc, err := nats.Connect(natsURL, nats.Token("new-token"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	app1 := startBackend(t, "app1")
	i := newInstance(t, nc, "app1", app1.url, 0)
	i.beat(heartbeat.StateReady)
	t.Cleanup(i.keepBeating())
	servedBy(t, base, "app1", 5*time.Second)
}

// TestAllowNetworksWarningWhenNATSIsNotLoopback validates (provisions,
// as `caddy validate` and `caddy run` do before starting) a gateway
// whose NATS is beyond this machine: provisioning does no network I/O, so
// nothing is dialed, and the warning is logged then.
func TestAllowNetworksWarningWhenNATSIsNotLoopback(t *testing.T) {
	const warning = "allow_networks is not set"
	tests := []struct {
		name, cx string
		warned   bool
	}{
		{"remote NATS", "\t\tnats nats://nats.internal.example:4222", true},
		{"remote NATS, allow_networks set", "\t\tnats nats://nats.internal.example:4222", false},
		{"loopback NATS", "\t\tnats nats://127.0.0.1:4222", false},
		{"embedded on loopback", "\t\tembedded_nats 127.0.0.1:4222", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logFile := filepath.Join(t.TempDir(), "caddy.log")
			proxy := "cx_proxy"
			if strings.Contains(tt.name, "allow_networks") {
				proxy = "cx_proxy {\n\t\tallow_networks 10.0.0.0/8\n\t}"
			}
			caddyfile := fmt.Sprintf("{\n\tadmin off\n\tlog {\n\t\toutput file %s\n\t\tformat json\n\t}\n\tcx {\n%s\n\t}\n}\nhttp://127.0.0.1:%d {\n\t%s\n}\n",
				logFile, tt.cx, freePort(t), proxy)
			cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
			if err != nil {
				t.Fatal(err)
			}
			var parsed caddy.Config
			if err := json.Unmarshal(cfg, &parsed); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&parsed); err != nil {
				t.Fatalf("validating: %v", err)
			}
			if got := logCount(t, logFile, warning) > 0; got != tt.warned {
				t.Fatalf("%q logged %v, want %v", warning, got, tt.warned)
			}
		})
	}
}

func TestRiseRoutesAfterNReadyHeartbeats(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_status /cx\n\tcx_proxy {\n\t\trise 3\n\t\tstale_after 10s\n\t}\n}")
	nc := connect(t, natsURL)
	app1 := startBackend(t, "app1")
	i := newInstance(t, nc, "app1", app1.url, 0)
	for n := 1; n < 3; n++ {
		i.beat(heartbeat.StateReady)
		// A marker published after the heartbeat on the same connection:
		// once the gateway lists it, it has applied the heartbeat too.
		marker := fmt.Sprintf("marker%d", n)
		newInstance(t, nc, marker, app1.url, 0).beat(heartbeat.StateDraining)
		s := serviceStatus(t, base+"/cx", heartbeat.DefaultPrefix, func(s ServiceStatus) bool {
			_, ok := instanceStatus(s, marker)
			return ok
		}, marker+" listed")
		in, _ := instanceStatus(s, "app1")
		if !in.Held || in.Primary {
			t.Fatalf("after %d of rise 3 ready heartbeats: %s, want held", n, mustJSON(in))
		}
		if id, code := get(t, "GET", base); code != 503 {
			t.Fatalf("after %d of rise 3 ready heartbeats: status %d from %q, want 503", n, code, id)
		}
	}
	i.beat(heartbeat.StateReady)
	servedBy(t, base, "app1", 2*time.Second)
}
