// Package integration tests caddy-cx end to end: the real caddy-cx binary,
// a real nats-server process and test backend processes, all on
// 127.0.0.1, killed with real signals.
//
//	go test -race -count=1 ./integration/
//
// TestMain builds the three binaries once per run, the gateway with the
// race detector: a data race in caddy-cx under these scenarios fails the
// test that ran it (see checkRaces). -short skips the package.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Binaries built by TestMain.
var bins struct {
	dir        string
	caddy      string // built with -race: the gateway of every scenario
	caddyPlain string // without: the CLI (reload, adapt), and figures the race detector distorts (memory, throughput)
	backend    string
	nats       string
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("integration: skipped in -short mode")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "caddy-cx-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	bins.dir = dir
	bins.caddy = filepath.Join(dir, "caddy-cx")
	bins.caddyPlain = filepath.Join(dir, "caddy-cx-plain")
	bins.backend = filepath.Join(dir, "testbackend")
	bins.nats = filepath.Join(dir, "nats-server")
	builds := [][]string{
		{"build", "-race", "-o", bins.caddy, "./cmd/caddy-cx"},
		{"build", "-o", bins.caddyPlain, "./cmd/caddy-cx"},
		{"build", "-o", bins.backend, "./integration/testbackend"},
		{"build", "-o", bins.nats, "github.com/nats-io/nats-server/v2"},
	}
	errs := make([]error, len(builds))
	var wg sync.WaitGroup
	for i, args := range builds {
		wg.Go(func() {
			cmd := exec.Command("go", args...)
			cmd.Dir = ".." // the repository root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
	wg.Wait()
	code := 0
	for _, err := range errs {
		if err != nil {
			fmt.Fprintln(os.Stderr, "integration: building binaries:", err)
			code = 1
		}
	}
	if code == 0 {
		code = m.Run()
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// stablePort returns a free TCP port on 127.0.0.1 below the kernel's
// ephemeral range, for servers that others keep dialing while they are
// down (a NATS node killed and restarted, a cluster still starting): a
// dial to an unbound port inside the range can connect to itself (TCP
// simultaneous open, source port = destination port) and then hold the
// port the server needs.
func stablePort(t testing.TB) int {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const from = 10000
	if low <= from+1000 {
		return freePort(t)
	}
	for range 1000 {
		port := from + rand.IntN(low-from)
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			ln.Close()
			return port
		}
	}
	return freePort(t)
}

// waitFor polls cond every 20ms until it returns true or timeout passes;
// then the test fails with what.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// poll is waitFor without failing: it reports whether cond came true.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAccepting waits until addr accepts TCP connections.
func waitAccepting(addr string, timeout time.Duration) bool {
	return poll(timeout, func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
}

// proc is a child process whose stderr (and stdout, unless watched) goes
// to a log file in the test's temp dir; the log's tail is printed if the
// test fails. It is killed when the test ends.
type proc struct {
	t       testing.TB
	name    string
	path    string
	args    []string
	env     []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has exited
}

func newProc(t testing.TB, name, path string, args ...string) *proc {
	p := &proc{t: t, name: name, path: path, args: args,
		logPath: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- tail of %s's log (%s) ---\n%s", p.name, p.logPath, tail(p.logPath, 40))
		}
	})
	return p
}

// start starts the process; stdout, if not nil, gets its standard output
// (which otherwise goes to the log).
func (p *proc) start(stdout io.Writer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("%s is already running", p.name)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), p.path, strings.Join(p.args, " "))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stderr = logf
	cmd.Stdout = logf
	if stdout != nil {
		cmd.Stdout = io.MultiWriter(logf, stdout)
	}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		_ = cmd.Wait() // also waits for stdout to be copied
		_ = logf.Close()
		close(done)
	}()
	return nil
}

// exited reports whether the current process has exited (true if none
// was started).
func (p *proc) exited() bool {
	_, done := p.current()
	return isClosed(done)
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// current returns the current process and its done channel (a closed
// one if none was started).
func (p *proc) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return nil, c
	}
	return p.cmd, p.done
}

// Cmd is the current process.
func (p *proc) Cmd() *exec.Cmd {
	cmd, _ := p.current()
	return cmd
}

// Pid is the current process's id.
func (p *proc) Pid() int {
	if cmd := p.Cmd(); cmd != nil {
		return cmd.Process.Pid
	}
	return 0
}

// Signal sends sig to the current process.
func (p *proc) Signal(sig syscall.Signal) {
	p.t.Helper()
	cmd, done := p.current()
	if cmd == nil {
		p.t.Fatalf("%s: signal %v: not started", p.name, sig)
	}
	select {
	case <-done:
		p.t.Fatalf("%s: signal %v: process already exited", p.name, sig)
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// Kill sends SIGKILL (which also ends a stopped process) and waits for
// the process to exit. It is a no-op if the process is not running.
func (p *proc) Kill() {
	cmd, done := p.current()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Term sends SIGTERM.
func (p *proc) Term() { p.t.Helper(); p.Signal(syscall.SIGTERM) }

// Stop sends SIGSTOP: the process hangs, its sockets stay open.
func (p *proc) Stop() { p.t.Helper(); p.Signal(syscall.SIGSTOP) }

// Cont sends SIGCONT.
func (p *proc) Cont() { p.t.Helper(); p.Signal(syscall.SIGCONT) }

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 if killed by a signal); ok is false on timeout.
func (p *proc) Wait(timeout time.Duration) (code int, ok bool) {
	cmd, done := p.current()
	if cmd == nil {
		return 0, false
	}
	select {
	case <-done:
	case <-time.After(timeout):
		return 0, false
	}
	return cmd.ProcessState.ExitCode(), true
}

// Log returns the process's log so far.
func (p *proc) Log() string {
	data, _ := os.ReadFile(p.logPath)
	return string(data)
}

// tail returns the last n lines of the file at path, before any
// goroutine dump.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	text, _, _ := strings.Cut(string(data), "\nSIGABRT: abort")
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------- NATS

// natsServer is a nats-server process on 127.0.0.1.
type natsServer struct {
	*proc
	Port int
	URL  string
}

// startNATS starts nats-server on 127.0.0.1:port (0 picks a free port) and
// waits until it accepts connections.
func startNATS(t testing.TB, port int) *natsServer {
	t.Helper()
	if port == 0 {
		port = freePort(t)
	}
	n := &natsServer{Port: port, URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	n.proc = newProc(t, fmt.Sprintf("nats-%d", port), bins.nats, "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	n.Restart()
	return n
}

// Restart starts the server again on the same port (killing it first if
// it runs) and waits until it accepts connections.
func (n *natsServer) Restart() {
	n.t.Helper()
	n.Kill()
	if err := n.start(nil); err != nil {
		n.t.Fatal(err)
	}
	if !waitAccepting(fmt.Sprintf("127.0.0.1:%d", n.Port), 10*time.Second) {
		n.t.Fatalf("nats-server does not accept connections on port %d", n.Port)
	}
}

// ------------------------------------------------------------- backends

// backend is a testbackend process.
type backend struct {
	*proc
	ID   string
	Addr string // 127.0.0.1:port
	URL  string // http://127.0.0.1:port
}

// listenWatcher passes output through and reports the address of the
// first `LISTEN host:port` line.
type listenWatcher struct {
	buf  bytes.Buffer // until the first line is complete
	done bool
	addr chan string // gets the address, or "" if the first line is not LISTEN
}

// Write is called by one goroutine of exec.Cmd only.
func (w *listenWatcher) Write(b []byte) (int, error) {
	if w.done {
		return len(b), nil
	}
	w.buf.Write(b)
	line, _, complete := strings.Cut(w.buf.String(), "\n")
	if complete {
		w.done = true
		addr, _ := strings.CutPrefix(strings.TrimSpace(line), "LISTEN ")
		w.addr <- addr
	}
	return len(b), nil
}

var backendSeq atomic.Int64

// startBackend starts a testbackend announcing itself on natsURL (empty:
// not at all) with the given priority, and waits until it serves. extra
// flags (e.g. "--listen", addr) are passed on.
func startBackend(t testing.TB, id, natsURL string, priority int, extra ...string) *backend {
	t.Helper()
	args := []string{"--id", id, "--nats", natsURL, "--priority", strconv.Itoa(priority)}
	args = append(args, extra...)
	b := &backend{ID: id}
	b.proc = newProc(t, fmt.Sprintf("backend-%s-%d", id, backendSeq.Add(1)), bins.backend, args...)
	w := &listenWatcher{addr: make(chan string, 1)}
	if err := b.start(w); err != nil {
		t.Fatal(err)
	}
	_, done := b.current()
	select {
	case b.Addr = <-w.addr:
		if b.Addr == "" {
			t.Fatalf("backend %s: first line of stdout is not `LISTEN host:port`:\n%s", id, tail(b.logPath, 20))
		}
	case <-done:
		t.Fatalf("backend %s exited before listening:\n%s", id, tail(b.logPath, 20))
	case <-time.After(10 * time.Second):
		t.Fatalf("backend %s printed no LISTEN line in 10s:\n%s", id, tail(b.logPath, 20))
	}
	b.URL = "http://" + b.Addr
	waitFor(t, 5*time.Second, "backend "+id+" to serve", func() bool {
		inst, status, err := get(http.DefaultClient, b.URL+"/")
		return err == nil && status == 200 && inst == id
	})
	return b
}

// get fetches url and returns the X-Instance header and status.
func get(c *http.Client, url string) (instance string, status int, err error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Header.Get("X-Instance"), resp.StatusCode, nil
}

// ------------------------------------------------------------- gateway

// gateway is a caddy-cx process serving one site.
type gateway struct {
	*proc
	AdminAddr string // 127.0.0.1:port of the admin API
	SiteAddr  string // 127.0.0.1:port of the site
	URL       string // http://SiteAddr
	file      string
}

// Placeholders startGateway and Reload replace in a Caddyfile.
const (
	AdminAddr = "ADMIN_ADDR" // the gateway's own admin address
	SiteAddr  = "SITE_ADDR"  // the site's address, 127.0.0.1:port
)

// startGateway writes caddyfile (with ADMIN_ADDR and SITE_ADDR replaced by
// free addresses) to a temp dir, runs the race-built `caddy-cx run` on it
// and waits until the site answers (any status).
func startGateway(t testing.TB, caddyfile string) *gateway {
	t.Helper()
	return startGatewayBin(t, bins.caddy, caddyfile)
}

// startGatewayBin is startGateway with the caddy-cx binary bin.
func startGatewayBin(t testing.TB, bin, caddyfile string) *gateway {
	t.Helper()
	return startGatewayNamed(t, "gateway", bin, caddyfile)
}

// startGatewayNamed is startGatewayBin with a name for its log (one per
// gateway when a test runs several).
func startGatewayNamed(t testing.TB, name, bin, caddyfile string) *gateway {
	t.Helper()
	dir := t.TempDir()
	g := &gateway{
		AdminAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		SiteAddr:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		file:      filepath.Join(dir, "Caddyfile"),
	}
	g.URL = "http://" + g.SiteAddr
	if err := os.WriteFile(g.file, []byte(g.expand(caddyfile)), 0o644); err != nil {
		t.Fatal(err)
	}
	g.proc = newProc(t, name, bin, "run", "--config", g.file, "--adapter", "caddyfile")
	g.env = []string{"XDG_DATA_HOME=" + filepath.Join(dir, "data"), "XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
		// The race detector reports and carries on (the test's own checks
		// still say what clients saw); checkRaces fails the test with the
		// report. A gateway that exits after a race exits with 66.
		"GORACE=halt_on_error=0 exitcode=66"}
	// Registered after newProc's cleanup, so it runs first: it ends the
	// gateway itself, so that the log is complete when it is read.
	t.Cleanup(func() {
		g.Kill()
		g.checkRaces(t)
	})
	if err := g.start(nil); err != nil {
		t.Fatal(err)
	}
	g.waitUp(t)
	return g
}

// waitUp waits until the gateway's site answers (any status), failing
// the test with a goroutine dump if it does not within 10s.
func (g *gateway) waitUp(t testing.TB) {
	t.Helper()
	_, done := g.current()
	client := &http.Client{Timeout: time.Second}
	up := poll(10*time.Second, func() bool {
		select {
		case <-done:
			return true
		default:
		}
		resp, err := client.Get(g.URL + "/")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return true
	})
	if g.exited() {
		t.Fatalf("gateway exited at start:\n%s", tail(g.logPath, 30))
	}
	if !up {
		t.Fatalf("gateway site %s does not answer 10s after start; the gateway's goroutines involving caddy-cx code:\n%s",
			g.URL, g.goroutineDump())
	}
}

// raceMarkers start the race detector's reports in the gateway's log;
// the last two end the process (too many goroutines, no shadow memory).
var raceMarkers = []string{"WARNING: DATA RACE", "race: limit on", "ThreadSanitizer"}

// raceReports returns the race detector's reports in the gateway's log,
// each from its marker to the closing line of '=' (at most 60 lines).
func (g *gateway) raceReports() []string {
	lines := strings.Split(g.Log(), "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		if !slices.ContainsFunc(raceMarkers, func(m string) bool { return strings.Contains(lines[i], m) }) {
			continue
		}
		end := i + 1
		for end < len(lines) && end-i < 60 && !strings.HasPrefix(lines[end], "==================") {
			end++
		}
		out = append(out, strings.Join(lines[i:end], "\n"))
		i = end
	}
	return out
}

// checkRaces fails the test if the race detector reported anything in
// the gateway (built with -race by TestMain), showing the first reports.
func (g *gateway) checkRaces(t testing.TB) {
	t.Helper()
	reports := g.raceReports()
	if len(reports) == 0 {
		return
	}
	shown := reports[:min(len(reports), 3)]
	t.Errorf("the race detector reported %d problem(s) in the gateway (log %s); the first:\n%s",
		len(reports), g.logPath, strings.Join(shown, "\n------------------\n"))
}

func (g *gateway) expand(caddyfile string) string {
	return strings.NewReplacer(AdminAddr, g.AdminAddr, SiteAddr, g.SiteAddr).Replace(caddyfile)
}

// goroutineDump aborts the gateway with SIGABRT (Go prints every
// goroutine) and returns the goroutines whose stacks contain caddy-cx
// code, the likely culprits of a hang.
func (g *gateway) goroutineDump() string {
	cmd, done := g.current()
	_ = cmd.Process.Signal(syscall.SIGABRT)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		return "(no goroutine dump: the gateway did not exit on SIGABRT)"
	}
	log := g.Log()
	var out []string
	for _, block := range strings.Split(log, "\n\n") {
		if strings.HasPrefix(block, "goroutine ") && strings.Contains(block, "caddy-cx/caddy-cx/") {
			lines := strings.Split(block, "\n")
			if len(lines) > 25 {
				lines = append(lines[:25], "\t...")
			}
			out = append(out, strings.Join(lines, "\n"))
		}
	}
	if len(out) == 0 {
		return tail(g.logPath, 40)
	}
	return strings.Join(out, "\n\n")
}

// Reload replaces the gateway's config with caddyfile (placeholders
// replaced as in startGateway) through `caddy-cx reload`.
func (g *gateway) Reload(caddyfile string) error {
	if err := os.WriteFile(g.file, []byte(g.expand(caddyfile)), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The command line client is not under test: the plain build, which
	// starts in milliseconds where the race-built one takes about a second.
	cmd := exec.CommandContext(ctx, bins.caddyPlain, "reload", "--config", g.file, "--adapter", "caddyfile", "--address", g.AdminAddr)
	cmd.Env = append(os.Environ(), g.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("caddy-cx reload: %v\n%s", err, out)
	}
	return nil
}

// logEntry is one JSON log line of the gateway.
type logEntry map[string]any

// Time is the entry's ts.
func (e logEntry) Time() time.Time {
	ts, _ := e["ts"].(float64)
	sec := int64(ts)
	return time.Unix(sec, int64((ts-float64(sec))*1e9))
}

// Str returns a string field, "" if absent.
func (e logEntry) Str(key string) string {
	s, _ := e[key].(string)
	return s
}

// logEntries parses the JSON lines of the log file at path.
func logEntries(path string) []logEntry {
	data, _ := os.ReadFile(path)
	var out []logEntry
	for line := range strings.SplitSeq(string(data), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var e logEntry
		if json.Unmarshal([]byte(line), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// findLog returns the first gateway log entry that matches, if any.
func (g *gateway) findLog(match func(logEntry) bool) (logEntry, bool) {
	for _, e := range logEntries(g.logPath) {
		if match(e) {
			return e, true
		}
	}
	return nil, false
}

// waitLog waits for a gateway log entry that matches.
func (g *gateway) waitLog(t testing.TB, timeout time.Duration, what string, match func(logEntry) bool) logEntry {
	t.Helper()
	var found logEntry
	waitFor(t, timeout, "gateway log: "+what, func() bool {
		e, ok := g.findLog(match)
		found = e
		return ok
	})
	return found
}

// membershipEvent matches the gateway's log line of a membership event
// (join, leave, stale, restart, ...) of one instance, after a time.
func membershipEvent(event, instance string, after time.Time) func(logEntry) bool {
	return func(e logEntry) bool {
		return e.Str("event") == event && e.Str("instance") == instance && !e.Time().Before(after)
	}
}

// instancesDoc is the JSON of GET /cx/instances.
type instancesDoc struct {
	Services []struct {
		SubjectPrefix string `json:"subject_prefix"`
		NATSConnected bool   `json:"nats_connected"`
		Instances     []struct {
			ID       string `json:"id"`
			URL      string `json:"url"`
			State    string `json:"state"`
			Priority int    `json:"priority"`
			Primary  bool   `json:"primary"`
		} `json:"instances"`
	} `json:"services"`
}

// Instances fetches GET /cx/instances from the admin API; ok is false if
// the gateway has no such endpoint (404) or it cannot be read.
func (g *gateway) Instances() (doc instancesDoc, ok bool) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + g.AdminAddr + "/cx/instances")
	if err != nil {
		return doc, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return doc, false
	}
	if json.NewDecoder(resp.Body).Decode(&doc) != nil {
		return doc, false
	}
	return doc, true
}

// instanceState returns the state /cx/instances shows for id ("" if not
// listed); ok is false if the endpoint is not available.
func (g *gateway) instanceState(id string) (state string, ok bool) {
	doc, ok := g.Instances()
	if !ok {
		return "", false
	}
	for _, s := range doc.Services {
		for _, in := range s.Instances {
			if in.ID == id {
				return in.State, true
			}
		}
	}
	return "", true
}

// coreCaddyfile is the gateway config of the core scenarios: one site
// proxied with cx_proxy (stale_after 1s) to the instances announcing on
// natsURL. globalExtra goes into the global options, siteExtra into the
// site block.
func coreCaddyfile(natsURL, globalExtra, siteExtra string) string {
	if globalExtra != "" {
		globalExtra = "\n" + strings.TrimRight(globalExtra, "\n")
	}
	if siteExtra != "" {
		siteExtra = "\n" + strings.TrimRight(siteExtra, "\n")
	}
	return fmt.Sprintf(`{
	admin %s
	cx {
		nats %s
	}%s
}

http://%s {
	cx_proxy {
		stale_after 1s
	}%s
}
`, AdminAddr, natsURL, globalExtra, SiteAddr, siteExtra)
}

// listenLocal listens on a free port of 127.0.0.1 until the test ends.
func listenLocal(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}
