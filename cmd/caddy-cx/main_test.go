//go:build unix

package main

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// TestMain runs the command line itself when the tests start this test
// binary as a child: the real main, real signals, real exit codes.
func TestMain(m *testing.M) {
	if os.Getenv("CADDY_CX_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// command is `caddy-cx args...` as a child process.
func command(args ...string) (*exec.Cmd, *bytes.Buffer) {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CADDY_CX_RUN_MAIN=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	return cmd, &out
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatal(err)
	return -1
}

func TestAnnounceBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"announce"}, "--nats is required (or CX_NATS)"},
		{[]string{"announce", "--nats", "nats://127.0.0.1:4222", "--id", "app1", "--url", "http://app1"}, "needs an explicit port"},
		{[]string{"announce", "--nope"}, "unknown flag: --nope"},
	}
	for _, tt := range tests {
		cmd, out := command(tt.args...)
		if code := exitCode(t, cmd.Run()); code != 2 || !strings.Contains(out.String(), tt.want) {
			t.Errorf("%q: exit %d, output %q; want exit 2 and %q", tt.args, code, out, tt.want)
		}
	}
}

// TestAnnounceHelpListsFlags: `caddy-cx help announce` and `announce -h`
// list every flag GNU-style with its environment variable, and exit 0.
func TestAnnounceHelpListsFlags(t *testing.T) {
	for _, args := range [][]string{{"help", "announce"}, {"announce", "-h"}, {"announce", "--help"}} {
		cmd, out := command(args...)
		if code := exitCode(t, cmd.Run()); code != 0 {
			t.Errorf("%q: exit %d; output:\n%s", args, code, out)
		}
		for _, want := range []string{"--id string", "[CX_ID]", "--interval duration", "--tls-cert string", "[CX_TLS_CERT]", "--priority int"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%q does not list %q:\n%s", args, want, out)
			}
		}
	}
}

// TestAnnounceSignals runs the sidecar binary against a real NATS server
// and a real health endpoint: heartbeats, draining on SIGUSR1, leaving on
// SIGTERM and exit 0.
func TestAnnounceSignals(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats server not ready")
	}
	defer s.Shutdown()
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer health.Close()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msgs := make(chan *nats.Msg, 256)
	if _, err := nc.ChanSubscribe("cx.ha.hb.app1", msgs); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	cmd, out := command("announce", "--id", "app1", "--url", health.URL, "--health", health.URL+"/healthz", "--interval", "100ms")
	cmd.Env = append(cmd.Env, "CX_NATS="+s.ClientURL())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	next := func(state heartbeat.State) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case msg := <-msgs:
				m, err := heartbeat.Decode("cx.ha", msg.Subject, msg.Data)
				if err != nil {
					t.Fatal(err)
				}
				if m.State == state {
					return
				}
			case <-deadline:
				t.Fatalf("no %s heartbeat; output:\n%s", state, out)
			}
		}
	}
	next(heartbeat.StateReady)
	if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	next(heartbeat.StateDraining)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next(heartbeat.StateLeaving)
	if code := exitCode(t, cmd.Wait()); code != 0 {
		t.Errorf("exit %d after SIGTERM; output:\n%s", code, out)
	}
}

// TestDemoDrillCommand runs `caddy-cx demo --drill` as users do.
func TestDemoDrillCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole drill")
	}
	cmd, out := command("demo", "--drill", "--duration", "500ms", "--interval", "200ms", "--port", "0", "--admin-port", "0", "--nats-port", "0")
	start := time.Now()
	code := exitCode(t, cmd.Run())
	t.Logf("demo --drill took %v", time.Since(start))
	if code != 0 || !strings.Contains(out.String(), "No client saw an error.") {
		t.Errorf("exit %d; output:\n%s", code, out)
	}
}

// TestLBPolicyOverrideWarns: an lb_policy inside cx_proxy replaces the
// failover tiers; the config still loads, with a warning that says so.
func TestLBPolicyOverrideWarns(t *testing.T) {
	dir := t.TempDir()
	for name, policy := range map[string]string{"override": "least_conn", "cx": "cx_round_robin"} {
		file := filepath.Join(dir, name)
		site := ":8080 {\n\tcx_proxy {\n\t\tlb_policy " + policy + "\n\t}\n}\n"
		if err := os.WriteFile(file, []byte(site), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd, out := command("adapt", "--config", file, "--adapter", "caddyfile")
		if err := cmd.Run(); err != nil {
			t.Fatalf("lb_policy %s: adapt failed: %v\n%s", policy, err, out)
		}
		warned := strings.Contains(out.String(), "replaces cx's failover tiers")
		if warned != (name == "override") {
			t.Errorf("lb_policy %s: warned %v; output:\n%s", policy, warned, out)
		}
	}
}
