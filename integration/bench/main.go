// Command bench measures caddy-cx beside nginx (the HA guide's config) and
// stock Caddy, all on 127.0.0.1, and writes docs/BENCHMARKS.md. Run it
// with integration/bench/run.sh (which installs wrk and nginx if absent
// and builds the binaries):
//
//	integration/bench/run.sh            # everything, ~10 minutes
//	integration/bench/run.sh -rounds 5  # flags are passed on
//
// What it measures (see docs/BENCHMARKS.md for the method):
//
//   - throughput at saturation (wrk), CPU per request, upstream
//     connections opened, p50/p99 at a fixed moderate rate, for: direct,
//     nginx, stock Caddy, Caddy with cx_proxy's settings but static
//     upstreams, caddy-cx; rounds interleaved, medians reported;
//   - crash (SIGKILL), hang (SIGSTOP) and 503-storm scenarios against
//     nginx, stock Caddy and caddy-cx: errors and worst latency clients saw;
//   - caddy-cx with 10, 1,000 and 10,000 announced instances (a `fleet`
//     subprocess of this program publishes the heartbeats): throughput,
//     heartbeat CPU, RSS.
//
// `bench fleet ...` is that heartbeat publisher.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

var (
	binDir   = flag.String("bindir", "", "directory with caddy-cx, testbackend, nats-server (required)")
	outFile  = flag.String("out", "docs/BENCHMARKS.md", "where to write the results")
	rounds   = flag.Int("rounds", 3, "interleaved rounds of the throughput and latency measurements")
	wrkDur   = flag.Duration("wrk-duration", 5*time.Second, "duration of one wrk run")
	wrkConns = flag.Int("conns", 64, "wrk connections")
	rate     = flag.Int("rate", 500, "requests/s of the fixed-rate latency measurement")
	rateDur  = flag.Duration("rate-duration", 5*time.Second, "duration of the fixed-rate measurement")
	only     = flag.String("only", "throughput,failures,scale", "which parts to run")
	nginxBin = flag.String("nginx", "nginx", "nginx binary")
)

var work string // temp dir of this run

func main() {
	if len(os.Args) > 1 && os.Args[1] == "fleet" {
		fleetMain(os.Args[2:])
		return
	}
	flag.Parse()
	if *binDir == "" {
		fatalf("-bindir is required (run integration/bench/run.sh)")
	}
	var err error
	work, err = os.MkdirTemp("", "caddy-cx-bench-")
	check(err)
	if os.Getenv("BENCH_KEEP") == "" {
		defer os.RemoveAll(work)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() { <-sigs; killAll(); os.Exit(1) }()
	defer killAll()

	rep := &report{started: time.Now()}
	parts := strings.Split(*only, ",")
	if slices.Contains(parts, "throughput") {
		rep.throughput = runThroughput()
	}
	if slices.Contains(parts, "failures") {
		rep.failures = runFailures()
	}
	if slices.Contains(parts, "scale") {
		rep.scale = runScale()
	}
	rep.finished = time.Now()
	check(os.WriteFile(*outFile, []byte(rep.markdown()), 0o644))
	fmt.Printf("wrote %s\n", *outFile)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	killAll()
	os.Exit(1)
}

func check(err error) {
	if err != nil {
		fatalf("%v", err)
	}
}

func logf(format string, args ...any) {
	fmt.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// ------------------------------------------------------------ processes

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

// start runs bin with args, output to a log file in work; stdout (if not
// nil) also gets its standard output.
func start(name, bin string, stdout io.Writer, args ...string) *proc {
	logf, err := os.Create(filepath.Join(work, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano())))
	check(err)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	cmd.Stdout = logf
	if stdout != nil {
		cmd.Stdout = io.MultiWriter(logf, stdout)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	check(cmd.Start())
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(p.done) }()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

// kill ends the process (and its process group: nginx's workers).
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

func killAll() {
	procsMu.Lock()
	ps := slices.Clone(procs)
	procsMu.Unlock()
	for _, p := range ps {
		p.kill()
	}
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitAccepting(addr string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			_ = c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func bin(name string) string { return filepath.Join(*binDir, name) }

// ---------------------------------------------------------- components

func startNATS() string {
	port := freePort()
	start("nats", bin("nats-server"), nil, "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if !waitAccepting(addr, 10*time.Second) {
		fatalf("nats-server does not start")
	}
	return "nats://" + addr
}

type backend struct {
	*proc
	id, addr string
}

// startBackend starts a testbackend (announcing on natsURL if not empty)
// on listen ("" picks a port).
func startBackend(id, natsURL string, priority int, listen string) *backend {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	pr, pw := io.Pipe()
	p := start("backend-"+id, bin("testbackend"), pw, "--id", id, "--nats", natsURL,
		"--priority", strconv.Itoa(priority), "--listen", listen)
	line, err := bufio.NewReader(pr).ReadString('\n')
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	check(err)
	addr := strings.TrimSpace(strings.TrimPrefix(line, "LISTEN "))
	if !waitAccepting(addr, 5*time.Second) {
		fatalf("backend %s does not serve", id)
	}
	return &backend{proc: p, id: id, addr: addr}
}

func (b *backend) connsOpened() int {
	var doc struct{ Opened int }
	resp, err := http.Get("http://" + b.addr + "/admin/conns")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&doc)
	return doc.Opened
}

// gateway is one of the proxies under test (or none: direct).
type gateway struct {
	name  string
	url   string
	admin string // caddy admin address, if any
	proc  *proc
}

// pids is the gateway process and its children (nginx's workers).
func (g *gateway) pids() []int {
	if g.proc == nil {
		return nil
	}
	out := []int{g.proc.pid()}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil && st.ppid == g.proc.pid() {
			out = append(out, pid)
		}
	}
	return out
}

func (g *gateway) stop() {
	if g.proc != nil {
		g.proc.kill()
	}
}

type stat struct {
	ppid  int
	ticks int64 // utime + stime, clock ticks
}

func readStat(pid int) (stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, err
	}
	s := string(data)
	s = s[strings.LastIndexByte(s, ')')+2:]
	f := strings.Fields(s)
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return stat{ppid: ppid, ticks: ut + st}, nil
}

// cpuSeconds is the CPU time used so far by the processes.
func cpuSeconds(pids []int) float64 {
	var t int64
	for _, pid := range pids {
		if st, err := readStat(pid); err == nil {
			t += st.ticks
		}
	}
	return float64(t) / 100 // USER_HZ
}

func rssMiB(pids []int) float64 {
	var kb int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				kb += n
			}
		}
	}
	return float64(kb) / 1024
}

// startCaddy runs caddy-cx with the site block body (SITE is replaced by
// the site address) and waits until the site answers.
func startCaddy(name, global, site string) *gateway {
	dir := filepath.Join(work, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	check(os.MkdirAll(dir, 0o755))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort())
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	cf := fmt.Sprintf("{\n\tadmin %s\n%s\n}\n\nhttp://%s {\n%s\n}\n", admin, global, addr, site)
	file := filepath.Join(dir, "Caddyfile")
	check(os.WriteFile(file, []byte(cf), 0o644))
	cmd := bin("caddy-cx")
	p := start(name, "/usr/bin/env", nil, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, cmd, "run", "--config", file, "--adapter", "caddyfile")
	if !waitAccepting(addr, 15*time.Second) {
		fatalf("%s does not start; config:\n%s", name, cf)
	}
	return &gateway{name: name, url: "http://" + addr, admin: admin, proc: p}
}

// nginxConf is the HA guide's nginx.conf, with the addresses of this run
// and the paths an unprivileged, temporary nginx needs (pid, logs, temp
// dirs). access_log is off, as Caddy logs no requests by default.
const nginxConf = `pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events {}
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;

  upstream cxreports {
    server %[2]s;            # primary
    server %[3]s backup;     # standby — used only if the primary is unavailable
  }

  server {
    listen %[4]s;
    location / {
      proxy_pass http://cxreports;
      proxy_http_version 1.1;

      # WebSocket support (live report progress)
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";

      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_read_timeout 300s;

      # If the primary errors or times out, retry on the standby
      proxy_next_upstream error timeout http_502 http_503 http_504;
    }
  }
}
`

func startNginx(primary, backup string) *gateway {
	dir := filepath.Join(work, fmt.Sprintf("nginx-%d", time.Now().UnixNano()))
	check(os.MkdirAll(dir, 0o755))
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	file := filepath.Join(dir, "nginx.conf")
	check(os.WriteFile(file, []byte(fmt.Sprintf(nginxConf, dir, primary, backup, addr)), 0o644))
	p := start("nginx", *nginxBin, nil, "-p", dir, "-c", file, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
	if !waitAccepting(addr, 10*time.Second) {
		fatalf("nginx does not start; see %s", dir)
	}
	return &gateway{name: "nginx", url: "http://" + addr, proc: p}
}

// Stock Caddy as a user would translate the guide's nginx.conf: app1
// first, app2 when app1 fails (passive health as nginx's max_fails=1
// fail_timeout=10s), retrying a failed dial on the other one.
func startStockCaddy(primary, backup string) *gateway {
	return startCaddy("caddy", "", fmt.Sprintf(`	reverse_proxy %s %s {
		lb_policy first
		lb_retries 1
		fail_duration 10s
	}`, primary, backup))
}

// Caddy with exactly the settings cx_proxy expands to, but static
// upstreams and lb_policy first: the difference to caddy-cx is the
// membership lookup and the cx transport.
func startStaticCx(primary, backup string) *gateway {
	return startCaddy("caddy-static-cx", "", fmt.Sprintf(`	reverse_proxy %s %s {
		lb_policy first
		lb_retries 16
		lb_retry_match {
			method GET HEAD OPTIONS PUT DELETE TRACE
		}
		lb_retry_match {
			method GET HEAD OPTIONS PUT DELETE TRACE
			expression `+"`{http.reverse_proxy.status_code} in [502, 503, 504]`"+`
		}
		stream_close_delay 24h
		request_buffers 64KiB
		transport http {
			keepalive_idle_conns_per_host 128
		}
	}`, primary, backup))
}

// startCx runs caddy-cx with cx_proxy; options go into its block.
func startCx(natsURL, options string) *gateway {
	return startCaddy("caddy-cx", fmt.Sprintf("\tcx {\n\t\tnats %s\n\t}", natsURL), fmt.Sprintf(`	cx_proxy {
		%s
	}`, options))
}

// waitServedBy waits until GET url is answered 200 by instance id.
func waitServedBy(url, id string, timeout time.Duration) bool {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := c.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == 200 && resp.Header.Get("X-Instance") == id {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// ----------------------------------------------------------------- wrk

type wrkResult struct {
	rps    float64
	errors int
}

var (
	reRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	reSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func runWrk(url string, conns int, d time.Duration) wrkResult {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "wrk", "-t2", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(int(d.Seconds()))+"s", url).CombinedOutput()
	if err != nil {
		fatalf("wrk: %v\n%s", err, out)
	}
	var r wrkResult
	if m := reRPS.FindSubmatch(out); m != nil {
		r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := reNon2xx.FindSubmatch(out); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		r.errors += n
	}
	if m := reSock.FindSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(string(s))
			r.errors += n
		}
	}
	return r
}

// ----------------------------------------------------- open-model load

type sample struct {
	start   time.Time
	latency time.Duration
	ok      bool
	status  int
}

// openLoad sends GET url at `rps` for d (open model: on schedule whatever
// happened to earlier requests); inject, if set, runs at `at`. Requests
// give up after clientTimeout. It returns when every request finished.
func openLoad(url string, rps int, d time.Duration, clientTimeout time.Duration, at time.Duration, inject func()) []sample {
	client := &http.Client{Timeout: clientTimeout, Transport: &http.Transport{
		MaxIdleConns: 2000, MaxIdleConnsPerHost: 2000, IdleConnTimeout: 30 * time.Second, DisableCompression: true}}
	defer client.CloseIdleConnections()
	every := time.Second / time.Duration(rps)
	n := int(d / every)
	out := make([]sample, n)
	var wg sync.WaitGroup
	begin := time.Now()
	injected := inject == nil
	for i := range n {
		next := begin.Add(time.Duration(i) * every)
		time.Sleep(time.Until(next))
		if !injected && time.Since(begin) >= at {
			injected = true
			go inject()
		}
		wg.Go(func() {
			s := sample{start: time.Now()}
			resp, err := client.Get(url)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				s.status = resp.StatusCode
			}
			s.latency = time.Since(s.start)
			s.ok = err == nil && s.status == 200
			out[i] = s
		})
	}
	wg.Wait()
	return out
}

func quantile(ss []sample, q float64) time.Duration {
	if len(ss) == 0 {
		return 0
	}
	ls := make([]time.Duration, len(ss))
	for i, s := range ss {
		ls[i] = s.latency
	}
	slices.Sort(ls)
	return ls[min(len(ls)-1, int(q*float64(len(ls))))]
}

func errorsOf(ss []sample) int {
	n := 0
	for _, s := range ss {
		if !s.ok {
			n++
		}
	}
	return n
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ---------------------------------------------------------- throughput

type tpRow struct {
	name                 string
	rps, cpuUS, connsPer []float64 // per round: requests/s, CPU µs per request, upstream conns opened / client conns
	p50, p99             []float64 // ms, at the fixed rate
	errors               int
}

func runThroughput() []*tpRow {
	logf("throughput: starting NATS, backends and gateways")
	natsURL := startNATS()
	app1 := startBackend("app1", natsURL, 0, "")
	app2 := startBackend("app2", natsURL, 1, "")
	gws := []*gateway{
		{name: "direct (no proxy)", url: "http://" + app1.addr},
		startNginx(app1.addr, app2.addr),
		startStockCaddy(app1.addr, app2.addr),
		startStaticCx(app1.addr, app2.addr),
		startCx(natsURL, "stale_after 1s"),
	}
	for _, g := range gws {
		if !waitServedBy(g.url+"/", "app1", 10*time.Second) {
			fatalf("%s does not route to app1", g.name)
		}
	}
	rows := make([]*tpRow, len(gws))
	for i, g := range gws {
		rows[i] = &tpRow{name: g.name}
	}
	// warm-up
	for _, g := range gws {
		runWrk(g.url+"/", *wrkConns, time.Second)
	}
	for r := range *rounds {
		for i, g := range gws {
			pids := g.pids()
			c0, o0 := cpuSeconds(pids), app1.connsOpened()+app2.connsOpened()
			t0 := time.Now()
			w := runWrk(g.url+"/", *wrkConns, *wrkDur)
			el := time.Since(t0).Seconds()
			c1, o1 := cpuSeconds(pids), app1.connsOpened()+app2.connsOpened()
			row := rows[i]
			row.rps = append(row.rps, w.rps)
			row.errors += w.errors
			if g.proc != nil && w.rps > 0 {
				row.cpuUS = append(row.cpuUS, (c1-c0)/(w.rps*el)*1e6)
			}
			row.connsPer = append(row.connsPer, float64(o1-o0)/float64(*wrkConns))
			ss := openLoad(g.url+"/", *rate, *rateDur, 10*time.Second, 0, nil)
			row.p50 = append(row.p50, float64(quantile(ss, 0.5))/1e6)
			row.p99 = append(row.p99, float64(quantile(ss, 0.99))/1e6)
			row.errors += errorsOf(ss)
			logf("round %d %-22s %8.0f req/s, cpu %6.1f µs/req, upstream conns/client conn %.2f, p50 %.2fms p99 %.2fms",
				r+1, g.name, w.rps, last(row.cpuUS), last(row.connsPer), last(row.p50), last(row.p99))
		}
	}
	for _, g := range gws {
		g.stop()
	}
	killAll()
	return rows
}

func last(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	return xs[len(xs)-1]
}

// ------------------------------------------------------------ failures

type failRow struct {
	scenario, gateway string
	requests, errors  int
	worst, p99        time.Duration
}

const (
	failRate    = 200
	failDur     = 8 * time.Second
	failAt      = 2 * time.Second
	clientGives = 15 * time.Second
)

func runFailures() []failRow {
	var rows []failRow
	for _, scenario := range []string{"crash (SIGKILL primary)", "hang (SIGSTOP primary)", "503 storm 3s (primary)"} {
		for _, kind := range []string{"nginx", "stock Caddy", "caddy-cx"} {
			natsURL := startNATS()
			app1 := startBackend("app1", natsURL, 0, "")
			app2 := startBackend("app2", natsURL, 1, "")
			var g *gateway
			switch kind {
			case "nginx":
				g = startNginx(app1.addr, app2.addr)
			case "stock Caddy":
				g = startStockCaddy(app1.addr, app2.addr)
			default:
				g = startCx(natsURL, "stale_after 1s")
			}
			if !waitServedBy(g.url+"/", "app1", 10*time.Second) {
				fatalf("%s does not route to app1", g.name)
			}
			var inject func()
			switch {
			case strings.HasPrefix(scenario, "crash"):
				inject = func() { app1.signal(syscall.SIGKILL) }
			case strings.HasPrefix(scenario, "hang"):
				inject = func() { app1.signal(syscall.SIGSTOP) }
			default:
				inject = func() {
					resp, err := http.Post("http://"+app1.addr+"/admin/fail?ms=3000", "text/plain", nil)
					if err == nil {
						_ = resp.Body.Close()
					}
				}
			}
			ss := openLoad(g.url+"/", failRate, failDur, clientGives, failAt, inject)
			row := failRow{scenario: scenario, gateway: kind, requests: len(ss), errors: errorsOf(ss),
				worst: quantile(ss, 1), p99: quantile(ss, 0.99)}
			rows = append(rows, row)
			logf("%-26s %-12s %5d requests, %5d errors, p99 %v, worst %v", scenario, kind, row.requests, row.errors,
				row.p99.Round(time.Millisecond), row.worst.Round(time.Millisecond))
			killAll()
		}
	}
	return rows
}

// --------------------------------------------------------------- scale

type scaleRow struct {
	n             int
	rps           []float64
	hbCPU, rssMiB float64 // % of one core with no HTTP load; MiB after the throughput runs
	known         int     // instances the gateway lists, -1 if unknown
}

func runScale() []*scaleRow {
	logf("scale: starting NATS, backends, fleets and gateways")
	natsURL := startNATS()
	app1 := startBackend("app1", "", 0, "")
	app2 := startBackend("app2", "", 1, "")
	sizes := []int{10, 1000, 10000}
	rows := make([]*scaleRow, len(sizes))
	gws := make([]*gateway, len(sizes))
	self, err := os.Executable()
	check(err)
	for i, n := range sizes {
		prefix := fmt.Sprintf("cx.s%d", n)
		start(fmt.Sprintf("fleet-%d", n), self, nil, "fleet", "--nats", natsURL, "--prefix", prefix, "--n", strconv.Itoa(n),
			"--primary", "http://"+app1.addr, "--backup", "http://"+app2.addr, "--max-run", "15m")
		// stale_after: the default, 3 x the fleet's 1s interval.
		gws[i] = startCx(natsURL, fmt.Sprintf("subject_prefix %s\n\t\tmax_instances 20000", prefix))
		gws[i].name = fmt.Sprintf("caddy-cx, %d instances", n)
		rows[i] = &scaleRow{n: n, known: -1}
	}
	for _, g := range gws {
		if !waitServedBy(g.url+"/", "app1", 60*time.Second) {
			fatalf("%s does not route to app1", g.name)
		}
	}
	time.Sleep(5 * time.Second) // every fleet has announced everything, several times
	for i, g := range gws {
		rows[i].known = knownInstances(g)
	}
	// Heartbeat CPU: all gateways idle (no HTTP) for 10s while the fleets
	// heartbeat.
	c0 := make([]float64, len(gws))
	for i, g := range gws {
		c0[i] = cpuSeconds(g.pids())
	}
	t0 := time.Now()
	time.Sleep(10 * time.Second)
	el := time.Since(t0).Seconds()
	for i, g := range gws {
		rows[i].hbCPU = (cpuSeconds(g.pids()) - c0[i]) / el * 100
		logf("%-28s heartbeat CPU %.2f%% of a core, RSS %.1f MiB, instances listed %d", g.name, rows[i].hbCPU, rssMiB(g.pids()), rows[i].known)
	}
	for _, g := range gws {
		runWrk(g.url+"/", *wrkConns, time.Second)
	}
	for r := range *rounds {
		for i, g := range gws {
			w := runWrk(g.url+"/", *wrkConns, *wrkDur)
			rows[i].rps = append(rows[i].rps, w.rps)
			logf("round %d %-28s %8.0f req/s (%d errors)", r+1, g.name, w.rps, w.errors)
		}
	}
	for i, g := range gws {
		rows[i].rssMiB = rssMiB(g.pids())
	}
	killAll()
	return rows
}

// knownInstances asks the admin API's /cx/instances, if the gateway has it.
func knownInstances(g *gateway) int {
	resp, err := http.Get("http://" + g.admin + "/cx/instances")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return -1
	}
	var doc struct {
		Services []struct {
			Instances []json.RawMessage `json:"instances"`
		} `json:"services"`
	}
	if json.NewDecoder(resp.Body).Decode(&doc) != nil {
		return -1
	}
	n := 0
	for _, s := range doc.Services {
		n += len(s.Instances)
	}
	return n
}

// --------------------------------------------------------------- fleet

// fleetMain publishes heartbeats (protocol v1) for n instances every
// second, spread over the second, and answers discovers: the primary
// (priority 0) and the backup (priority 1) are real backends, the other
// n-2 ids are priority 10 and point at the backup's address.
func fleetMain(args []string) {
	fs := flag.NewFlagSet("fleet", flag.ExitOnError)
	natsURL := fs.String("nats", "", "NATS URL")
	prefix := fs.String("prefix", "cx.ha", "subject prefix")
	n := fs.Int("n", 10, "instances")
	primary := fs.String("primary", "", "URL of the priority-0 instance")
	backup := fs.String("backup", "", "URL of the priority-1 instance (and of the fakes)")
	limit := fs.Duration("max-run", time.Hour, "exit after this long")
	_ = fs.Parse(args)
	nc, err := nats.Connect(*natsURL, nats.ReconnectBufSize(-1), nats.MaxReconnects(-1))
	check(err)
	startedAt := time.Now().UTC().Format(time.RFC3339Nano)
	var seq atomic.Int64
	type inst struct {
		id, url  string
		priority int
	}
	insts := make([]inst, *n)
	for i := range insts {
		switch i {
		case 0:
			insts[i] = inst{"real-primary", *primary, 0}
		case 1:
			insts[i] = inst{"real-backup", *backup, 1}
		default:
			insts[i] = inst{fmt.Sprintf("fake-%05d", i), *backup, 10}
		}
	}
	seqs := make([]atomic.Int64, *n)
	publish := func(i int) {
		in := insts[i]
		s := seqs[i].Add(1)
		seq.Add(1)
		msg := fmt.Sprintf(`{"proto":1,"id":%q,"url":%q,"state":"ready","started_at":%q,"seq":%d,"interval_ms":1000,"version":"bench","priority":%d}`,
			in.id, in.url, startedAt, s, in.priority)
		_ = nc.Publish(*prefix+".hb."+in.id, []byte(msg))
	}
	var mu sync.Mutex // one sweep at a time
	sweep := func(spread time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		begin := time.Now()
		for i := range insts {
			if spread > 0 && i%100 == 0 {
				time.Sleep(time.Until(begin.Add(spread * time.Duration(i) / time.Duration(len(insts)))))
			}
			publish(i)
		}
	}
	_, err = nc.Subscribe(*prefix+".discover", func(*nats.Msg) { go sweep(100 * time.Millisecond) })
	check(err)
	deadline := time.Now().Add(*limit)
	for time.Now().Before(deadline) {
		t0 := time.Now()
		sweep(900 * time.Millisecond)
		time.Sleep(time.Until(t0.Add(time.Second)))
	}
}
