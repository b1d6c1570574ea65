package demo

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// MaxGateways bounds --gateways: each is a process of its own.
const MaxGateways = 9

// Caddy is one per process, so gateways 2..N of `demo --gateways N` are
// child processes running this executable's `run` command on a Caddyfile
// of their own, connected to gateway 1's embedded NATS server.

// gatewayExecutable is the program the child gateways run; childEnv is
// added to their environment (tests run the test binary as caddy-cx).
var (
	gatewayExecutable = os.Executable
	childEnv          []string
)

// childGateway is one gateway process the demo started.
type childGateway struct {
	id        string
	sitePort  int
	adminPort int
	dir       string // its Caddyfile, log and data
	cmd       *exec.Cmd
	done      chan struct{} // closed when it has exited
}

func (c *childGateway) site() string  { return fmt.Sprintf("http://127.0.0.1:%d", c.sitePort) }
func (c *childGateway) admin() string { return fmt.Sprintf("http://127.0.0.1:%d", c.adminPort) }
func (c *childGateway) logPath() string {
	return filepath.Join(c.dir, "gateway.log")
}

// childCaddyfile is gateway id's configuration: the same site as gateway
// 1's (caddyfileFor), on its own ports, on gateway 1's NATS server.
func childCaddyfile(o *Options, id string, sitePort, adminPort int) string {
	return demoCaddyfile(o, fmt.Sprintf("nats nats://127.0.0.1:%d\n\t\tgateway_id %s", o.NATSPort, id), sitePort, adminPort)
}

// startChildGateways starts gateways gw2..gwN and waits until each one's
// admin API answers. On error, those already started are stopped.
func startChildGateways(o *Options) ([]*childGateway, error) {
	var out []*childGateway
	for i := 2; i <= o.Gateways; i++ {
		c, err := startChildGateway(o, fmt.Sprintf("gw%d", i))
		if err != nil {
			stopChildGateways(out)
			return nil, err
		}
		out = append(out, c)
	}
	for _, c := range out {
		if err := c.waitAdmin(20 * time.Second); err != nil {
			stopChildGateways(out)
			return nil, err
		}
	}
	return out, nil
}

func startChildGateway(o *Options, id string) (*childGateway, error) {
	exe, err := gatewayExecutable()
	if err != nil {
		return nil, fmt.Errorf("demo: finding this program to run gateway %s: %w", id, err)
	}
	c := &childGateway{id: id, done: make(chan struct{})}
	if c.sitePort, err = claimPort(0, "--port"); err != nil {
		return nil, err
	}
	if c.adminPort, err = claimPort(0, "--admin-port"); err != nil {
		return nil, err
	}
	if c.dir, err = os.MkdirTemp("", "caddy-cx-demo-"+id+"-"); err != nil {
		return nil, fmt.Errorf("demo: gateway %s: %w", id, err)
	}
	file := filepath.Join(c.dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(childCaddyfile(o, id, c.sitePort, c.adminPort)), 0o600); err != nil {
		_ = os.RemoveAll(c.dir)
		return nil, fmt.Errorf("demo: gateway %s: %w", id, err)
	}
	logf, err := os.Create(c.logPath())
	if err != nil {
		_ = os.RemoveAll(c.dir)
		return nil, fmt.Errorf("demo: gateway %s: %w", id, err)
	}
	c.cmd = exec.Command(exe, "run", "--config", file, "--adapter", "caddyfile")
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// Its own data and config directories: nothing shared with gateway 1
	// or with a Caddy of the user's.
	c.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(c.dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(c.dir, "config"))
	c.cmd.Env = append(c.cmd.Env, childEnv...)
	c.cmd.SysProcAttr = childProcAttr()
	if err := c.cmd.Start(); err != nil {
		_ = logf.Close()
		_ = os.RemoveAll(c.dir)
		return nil, fmt.Errorf("demo: starting gateway %s (%s run): %w", id, exe, err)
	}
	go func() {
		_ = c.cmd.Wait()
		_ = logf.Close()
		close(c.done)
	}()
	return c, nil
}

// waitAdmin waits until the gateway's admin API answers.
func (c *childGateway) waitAdmin(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-c.done:
			return fmt.Errorf("demo: gateway %s exited at start; its log (%s):\n%s", c.id, c.logPath(), c.logTail(20))
		default:
		}
		if get(c.admin()+"/config/") == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: gateway %s does not answer on %s %v after its start; its log (%s):\n%s",
				c.id, c.admin(), timeout, c.logPath(), c.logTail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *childGateway) logTail(n int) string {
	data, err := os.ReadFile(c.logPath())
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stop asks the gateway to stop (SIGTERM: it announces leaving), kills
// it if it has not exited within 5s, and removes its directory.
func (c *childGateway) stop() error {
	var err error
	if c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
			err = fmt.Errorf("demo: gateway %s did not stop within 5s of SIGTERM; killed", c.id)
		}
	}
	return errors.Join(err, os.RemoveAll(c.dir))
}

func stopChildGateways(cs []*childGateway) {
	for _, c := range cs {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range cs {
		_ = c.stop()
	}
}
