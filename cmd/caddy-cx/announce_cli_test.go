//go:build unix

package main

import (
	"bytes"
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
	"github.com/nats-io/nkeys"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
)

// These tests build caddy-cx with `go build` and run `caddy-cx announce` as
// a process against a real nats-server that requires each kind of
// authentication, watching its heartbeats on a NATS subscriber.

// buildCaddyCx builds the command into dir.
func buildCaddyCx(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "caddy-cx")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// sidecar is a running `caddy-cx announce` process and the heartbeats of
// its id seen on NATS.
type sidecar struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	msgs chan *nats.Msg
}

// startSidecar runs announce with args and env (KEY=value), watching
// cx.ha.hb.app1 through a subscriber connected with sub.
func startSidecar(t *testing.T, bin, natsURL string, sub []nats.Option, args []string, env ...string) *sidecar {
	t.Helper()
	nc, err := nats.Connect(natsURL, sub...)
	if err != nil {
		t.Fatalf("subscriber: %v", err)
	}
	t.Cleanup(nc.Close)
	s := &sidecar{msgs: make(chan *nats.Msg, 256), out: &bytes.Buffer{}}
	if _, err := nc.ChanSubscribe(heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, "app1"), s.msgs); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, append([]string{"announce"}, args...)...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); _ = s.cmd.Wait() })
	return s
}

// next waits for a heartbeat in state.
func (s *sidecar) next(t *testing.T, state heartbeat.State) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case msg := <-s.msgs:
			m, err := heartbeat.Decode(heartbeat.DefaultPrefix, msg.Subject, msg.Data)
			if err != nil {
				t.Fatal(err)
			}
			if m.State == state {
				return
			}
		case <-deadline:
			t.Fatalf("no %s heartbeat within 5s; announce's output:\n%s", state, s.out)
		}
	}
}

func (s *sidecar) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// leave ends the sidecar as an orchestrator does and checks it said so.
func (s *sidecar) leave(t *testing.T) {
	t.Helper()
	s.signal(t, syscall.SIGTERM)
	s.next(t, heartbeat.StateLeaving)
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("announce exited with %v after SIGTERM; output:\n%s", err, s.out)
	}
}

func healthy(t *testing.T) *httptest.Server {
	h := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(h.Close)
	return h
}

// authCase is a nats-server requiring one kind of authentication, the
// sidecar's flags for it, the same as CX_* variables, and the subscriber's
// options.
type authCase struct {
	name  string
	url   string
	flags []string // --flag value pairs
	sub   []nats.Option
}

func (c authCase) env() []string {
	var out []string
	for i := 0; i < len(c.flags); i += 2 {
		name := strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(c.flags[i], "--"), "-", "_"))
		out = append(out, "CX_"+name+"="+c.flags[i+1])
	}
	return out
}

func credentialsCase(t *testing.T) authCase {
	op := natstest.NewOperator(t)
	s := natstest.Start(t, op.Options())
	return authCase{"credentials", s.ClientURL(), []string{"--credentials", op.Creds(t, "app1.creds")}, []nats.Option{nats.UserCredentials(op.Creds(t, "sub.creds"))}}
}

func nkeyCase(t *testing.T) authCase {
	app, _ := nkeys.CreateUser()
	sub, _ := nkeys.CreateUser()
	appPub, _ := app.PublicKey()
	subPub, _ := sub.PublicKey()
	seed, _ := app.Seed()
	s := natstest.Start(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: appPub}, {Nkey: subPub}}})
	return authCase{"nkey", s.ClientURL(), []string{"--nkey", natstest.WriteFile(t, "app1.nk", seed)}, []nats.Option{nats.Nkey(subPub, sub.Sign)}}
}

// tlsCase is a server requiring client certificates of a private CA.
func tlsCase(t *testing.T) authCase {
	pki := natstest.NewPKI(t)
	s := natstest.Start(t, pki.MutualTLS(t))
	return authCase{"tls", s.ClientURL(), []string{"--tls-ca", pki.CA, "--tls-cert", pki.ClientCert, "--tls-key", pki.ClientKey},
		[]nats.Option{nats.RootCAs(pki.CA), nats.ClientCert(pki.ClientCert, pki.ClientKey)}}
}

// TestAnnounceProcess builds caddy-cx once and runs the announce process.
func TestAnnounceProcess(t *testing.T) {
	bin := buildCaddyCx(t, t.TempDir())
	t.Run("auth", func(t *testing.T) { announceAuthenticates(t, bin) })
	t.Run("signals", func(t *testing.T) { announceSignals(t, bin) })
	t.Run("health-timeout", func(t *testing.T) { announceHealthTimeout(t, bin) })
}

// announceAuthenticates: the announce process connects with each kind of
// authentication, given as flags and as CX_* variables.
func announceAuthenticates(t *testing.T, bin string) {
	for _, mk := range []func(*testing.T) authCase{credentialsCase, nkeyCase, tlsCase} {
		c := mk(t)
		health := healthy(t)
		base := []string{"--id", "app1", "--url", health.URL, "--interval", "100ms"}
		t.Run(c.name+"/flags", func(t *testing.T) {
			s := startSidecar(t, bin, c.url, c.sub, append(append(base, "--nats", c.url), c.flags...))
			s.next(t, heartbeat.StateReady)
			s.leave(t)
		})
		t.Run(c.name+"/env", func(t *testing.T) {
			s := startSidecar(t, bin, c.url, c.sub, base, append(c.env(), "CX_NATS="+c.url)...)
			s.next(t, heartbeat.StateReady)
			s.leave(t)
		})
		t.Run(c.name+"/without", func(t *testing.T) {
			// The server really requires it: without, nothing arrives.
			s := startSidecar(t, bin, c.url, c.sub, append(base, "--nats", c.url))
			select {
			case msg := <-s.msgs:
				t.Fatalf("a heartbeat without %s: %s", c.name, msg.Data)
			case <-time.After(500 * time.Millisecond): // five intervals: the absence under test
			}
		})
	}
}

// announceSignals: SIGUSR1 announces draining, SIGUSR2 ready again, sent
// to the process.
func announceSignals(t *testing.T, bin string) {
	url := natstest.Start(t, nil).ClientURL()
	health := healthy(t)
	s := startSidecar(t, bin, url, nil, []string{"--nats", url, "--id", "app1", "--url", health.URL, "--interval", "100ms"})
	s.next(t, heartbeat.StateReady)
	s.signal(t, syscall.SIGUSR1)
	s.next(t, heartbeat.StateDraining)
	s.signal(t, syscall.SIGUSR2)
	s.next(t, heartbeat.StateReady)
	s.leave(t)
}

// announceHealthTimeout: one health check is cut off at --health-timeout
// (CX_HEALTH_TIMEOUT), not at the interval, and a check cut off sends no
// heartbeat.
func announceHealthTimeout(t *testing.T, bin string) {
	url := natstest.Start(t, nil).ClientURL()
	for _, variant := range []string{"flag", "env"} {
		t.Run(variant, func(t *testing.T) {
			cut := make(chan time.Duration, 16)
			slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				start := time.Now()
				select {
				case <-r.Context().Done():
					cut <- time.Since(start)
				case <-time.After(3 * time.Second):
				}
			}))
			t.Cleanup(slow.Close)
			args := []string{"--nats", url, "--id", "app1", "--url", slow.URL, "--health", slow.URL + "/healthz", "--interval", "2s"}
			var env []string
			if variant == "flag" {
				args = append(args, "--health-timeout", "200ms")
			} else {
				env = append(env, "CX_HEALTH_TIMEOUT=200ms")
			}
			s := startSidecar(t, bin, url, nil, args, env...)
			select {
			case d := <-cut:
				// 200ms, not the 2s interval; up to 1s for a busy machine.
				if d < 150*time.Millisecond || d > time.Second {
					t.Fatalf("the health check was cut off after %v, want about 200ms", d)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the health check was not cut off; output:\n%s", s.out)
			}
			select {
			case msg := <-s.msgs:
				t.Fatalf("a heartbeat while the health check times out: %s", msg.Data)
			default:
			}
		})
	}
}
