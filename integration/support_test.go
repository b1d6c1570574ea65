package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Helpers of the failure scenarios (scenarios_test.go): a NATS cluster,
// the gateway's runtime figures from Caddy's admin API, reloads through
// the admin API's /load, and what the backends report about themselves.

// ------------------------------------------------------- NATS cluster

// natsNode is one server of a NATS cluster; MonitorURL serves /connz.
// StoreDir is its JetStream store ("" without JetStream); it survives
// Restart.
type natsNode struct {
	*natsServer
	Name        string
	ClusterPort int
	MonitorURL  string
	StoreDir    string
}

// startNATSCluster starts n nats-servers on 127.0.0.1 that form one
// cluster (each routes to all others) and waits until every one accepts
// client connections and sees the other n-1 as routes.
func startNATSCluster(t testing.TB, n int) []*natsNode {
	t.Helper()
	return startNATSClusterWith(t, n, false)
}

// startNATSClusterJS is startNATSCluster with JetStream on every node,
// each with its own store dir under t.TempDir(); it also waits until the
// JetStream meta group has a leader that every node knows.
func startNATSClusterJS(t testing.TB, n int) []*natsNode {
	t.Helper()
	nodes := startNATSClusterWith(t, n, true)
	waitJetStream(t, nodes, 20*time.Second)
	return nodes
}

func startNATSClusterWith(t testing.TB, n int, jetstream bool) []*natsNode {
	t.Helper()
	nodes := make([]*natsNode, n)
	for i := range nodes {
		// below the ephemeral range: peers and clients dial these while
		// a node starts or is down (stablePort)
		nodes[i] = &natsNode{natsServer: &natsServer{Port: stablePort(t)}, ClusterPort: stablePort(t), Name: fmt.Sprintf("node%d", i+1)}
		nodes[i].URL = fmt.Sprintf("nats://127.0.0.1:%d", nodes[i].Port)
	}
	for i, node := range nodes {
		var routes []string
		for j, other := range nodes {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", other.ClusterPort))
			}
		}
		mon := freePort(t)
		node.MonitorURL = fmt.Sprintf("http://127.0.0.1:%d", mon)
		args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(node.Port),
			"-m", strconv.Itoa(mon), "-n", node.Name,
			"--cluster_name", "cx", "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", node.ClusterPort),
			"--routes", strings.Join(routes, ",")}
		if jetstream {
			node.StoreDir = filepath.Join(t.TempDir(), node.Name)
			args = append(args, "-js", "-sd", node.StoreDir)
		}
		node.proc = newProc(t, fmt.Sprintf("nats-%s-%d", node.Name, node.Port), bins.nats, args...)
		node.Restart()
	}
	for i, node := range nodes {
		waitFor(t, 15*time.Second, fmt.Sprintf("NATS node%d to route to the other %d nodes", i+1, n-1), func() bool {
			return node.routes() >= n-1
		})
	}
	return nodes
}

// jsMetaLeader is the JetStream meta leader the node knows ("" if none,
// or JetStream is off, or the node does not answer).
func (n *natsNode) jsMetaLeader() string {
	var doc struct {
		Meta *struct {
			Leader string `json:"leader"`
			Size   int    `json:"cluster_size"`
		} `json:"meta_cluster"`
	}
	if getJSON(n.MonitorURL+"/jsz", &doc) != nil || doc.Meta == nil {
		return ""
	}
	return doc.Meta.Leader
}

// waitJetStream waits until every running node knows the same JetStream
// meta leader, one of them (a dead leader is still named until the
// election), and returns how long that took.
func waitJetStream(t testing.TB, nodes []*natsNode, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var leaders []string
	if !poll(timeout, func() bool {
		leaders = leaders[:0]
		var running []string
		for _, node := range nodes {
			if node.exited() {
				continue
			}
			running = append(running, node.Name)
			leaders = append(leaders, node.jsMetaLeader())
		}
		return len(leaders) > 0 && slices.Contains(running, leaders[0]) &&
			!slices.ContainsFunc(leaders, func(l string) bool { return l != leaders[0] })
	}) {
		t.Fatalf("JetStream has no meta leader all nodes agree on after %v (leaders seen: %q)", timeout, leaders)
	}
	return time.Since(start)
}

// routes is how many distinct servers the node has routes to (-1 if it
// cannot tell).
func (n *natsNode) routes() int {
	var doc struct {
		Routes []struct {
			RemoteID string `json:"remote_id"`
		} `json:"routes"`
	}
	if getJSON(n.MonitorURL+"/routez", &doc) != nil {
		return -1
	}
	ids := map[string]bool{}
	for _, r := range doc.Routes {
		ids[r.RemoteID] = true
	}
	return len(ids)
}

// clients lists the names of the client connections the node has.
func (n *natsNode) clients() []string {
	var doc struct {
		Connections []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	if getJSON(n.MonitorURL+"/connz", &doc) != nil {
		return nil
	}
	var out []string
	for _, c := range doc.Connections {
		out = append(out, c.Name)
	}
	return out
}

// clusterURLs is the comma-separated client URLs of the nodes.
func clusterURLs(nodes []*natsNode) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.URL)
	}
	return out
}

func getJSON(url string, v any) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return doJSON(req, v)
}

// doJSON sends req and decodes a 200 answer's JSON into v.
func doJSON(req *http.Request, v any) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", req.URL, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// ------------------------------------------------ gateway's own figures

// runtimeStats are the gateway's goroutine count and heap, read from
// Caddy's admin API (/debug/pprof/, /debug/vars).
type runtimeStats struct {
	Goroutines int
	HeapAlloc  uint64 // bytes, after a forced GC
	HeapInuse  uint64
	Sys        uint64
}

func (s runtimeStats) String() string {
	return fmt.Sprintf("%d goroutines, heap %.1f MiB allocated (%.1f MiB in use), %.1f MiB from the OS",
		s.Goroutines, mib(s.HeapAlloc), mib(s.HeapInuse), mib(s.Sys))
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// runtimeStats forces a GC in the gateway (the heap profile's gc=1) and
// reads its goroutine count and memory statistics.
func (g *gateway) runtimeStats() (runtimeStats, error) {
	var s runtimeStats
	c := &http.Client{Timeout: 10 * time.Second}
	admin := "http://" + g.AdminAddr
	for range 2 {
		resp, err := c.Get(admin + "/debug/pprof/heap?gc=1")
		if err != nil {
			return s, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
	resp, err := c.Get(admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return s, err
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	_ = resp.Body.Close()
	if err != nil {
		return s, err
	}
	// goroutine profile: total 123
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &s.Goroutines); err != nil {
		return s, fmt.Errorf("goroutine profile header %q: %v", line, err)
	}
	var vars struct {
		MemStats struct {
			HeapAlloc uint64
			HeapInuse uint64
			Sys       uint64
		} `json:"memstats"`
	}
	if err := getJSON(admin+"/debug/vars", &vars); err != nil {
		return s, err
	}
	s.HeapAlloc, s.HeapInuse, s.Sys = vars.MemStats.HeapAlloc, vars.MemStats.HeapInuse, vars.MemStats.Sys
	return s, nil
}

// LoadViaAdmin replaces the gateway's config with caddyfile (placeholders
// replaced) by adapting it with `caddy-cx adapt` and POSTing the JSON to
// the admin API's /load.
func (g *gateway) LoadViaAdmin(caddyfile string) error {
	if err := os.WriteFile(g.file, []byte(g.expand(caddyfile)), 0o644); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The CLI is not under test: the plain build (see Reload).
	cmd := exec.CommandContext(ctx, bins.caddyPlain, "adapt", "--config", g.file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), g.env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	js, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("caddy-cx adapt: %v\n%s", err, stderr.String())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+g.AdminAddr+"/load", strings.NewReader(string(js)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: status %d: %s", resp.StatusCode, body)
	}
	return nil
}

// --------------------------------------------------- backends' reports

// conns is what a backend's /admin/conns reports: TCP connections
// accepted so far and open now (-1, -1 if it cannot tell).
func (b *backend) conns() (opened, open int) {
	var doc struct {
		Opened int `json:"opened"`
		Open   int `json:"open"`
	}
	if getJSON(b.URL+"/admin/conns", &doc) != nil {
		return -1, -1
	}
	return doc.Opened, doc.Open
}

// logTime returns the time of the first line of the backend's log (slog
// text: `time=... level=... msg="..."`) whose msg is msg, and whether
// there is one.
func (b *backend) logTime(msg string) (time.Time, bool) {
	for line := range strings.SplitSeq(b.Log(), "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) && !strings.Contains(line, "msg="+msg+" ") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if at, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			return at, true
		}
	}
	return time.Time{}, false
}

// pid is the backend's process id as its X-Process header shows it.
func (b *backend) pid() string { return strconv.Itoa(b.Pid()) }

// servedBy returns the successful responses of one backend process.
func (rs results) servedBy(pid string) results {
	var out results
	for _, r := range rs {
		if r.OK() && r.Process == pid {
			out = append(out, r)
		}
	}
	return out
}

// withStatus returns the results with the given status.
func (rs results) withStatus(status int) results {
	var out results
	for _, r := range rs {
		if r.Status == status {
			out = append(out, r)
		}
	}
	return out
}

// slower returns the results that took longer than d.
func (rs results) slower(d time.Duration) results {
	var out results
	for _, r := range rs {
		if r.Latency > d {
			out = append(out, r)
		}
	}
	return out
}

// envBool reports whether the environment variable is set to something
// other than "", "0" or "false".
func envBool(name string) bool {
	v := os.Getenv(name)
	return v != "" && v != "0" && v != "false"
}

// warmBaseline runs a warm-up load until each of ids served n requests
// (without an error), lets its client connections close, and returns the
// gateway's runtime figures then: the baseline to compare with later.
func warmBaseline(t *testing.T, gw *gateway, n int, ids ...string) runtimeStats {
	t.Helper()
	warm := startLoad(t, gw.URL+"/", loadEvery)
	for _, id := range ids {
		warm.waitServed(t, 5*time.Second, id, n, time.Time{})
	}
	if errs := warm.Stop().Errors(); len(errs) > 0 {
		t.Fatalf("warm-up: %d errors:\n%s", len(errs), errs.Describe(5))
	}
	// The load closed its idle connections; the gateway's goroutines
	// serving them end once it reads their EOF: the baseline is taken
	// when the count holds still.
	var base runtimeStats
	var err error
	prev := -1
	if !poll(5*time.Second, func() bool {
		base, err = gw.runtimeStats()
		if err != nil {
			return false
		}
		settled := base.Goroutines == prev
		prev = base.Goroutines
		return settled
	}) {
		t.Fatalf("the gateway's goroutines did not settle within 5s after the warm-up (last %d, error %v)", base.Goroutines, err)
	}
	return base
}
