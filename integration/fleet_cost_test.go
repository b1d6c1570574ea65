package integration

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestFleetCost measures what a fleet costs (skipped unless
// CX_FLEET_COST=1): 1,000 instances heartbeating every second (one
// publisher, spread over the second) on a 3-node NATS cluster with
// JetStream, and
//
//   - one gateway alone,
//   - three gateways with share_failures on (the default),
//   - three gateways with share_failures off,
//   - the last two again with round-robin over every instance under 100
//     GETs/s per gateway, the fakes pointing at a closed port: failures
//     (and observations) as fast as they come,
//
// each for CX_FLEET_COST_WINDOW (default 30s) after a settling period, the
// gateways being the plain build (the race detector multiplies CPU). Per
// gateway: CPU (utime+stime from /proc/<pid>/stat) as % of one core, RSS;
// and NATS messages per second by subject kind, counted by a subscriber on
// `>`, plus the nodes' in_msgs from /varz. It prints a table.
//
//	CX_FLEET_COST=1 go test -count=1 -run TestFleetCost -v ./integration/
func TestFleetCost(t *testing.T) {
	if !envBool("CX_FLEET_COST") {
		t.Skip("set CX_FLEET_COST=1 to measure the fleet's cost (about 2 minutes)")
	}
	const instances = 1000
	window := envDuration(t, "CX_FLEET_COST_WINDOW", 30*time.Second)
	nodes := startNATSClusterJS(t, 3)
	urls := clusterURLs(nodes)
	app1 := startBackend(t, "app1", strings.Join(urls, ","), 0, "--interval", "1s")
	app2 := startBackend(t, "app2", strings.Join(urls, ","), 1, "--interval", "1s")
	// The fakes point at a port nobody listens on: never tried under
	// failover (priority 10), each a failure under round_robin.
	dead := freePort(t)
	if waitAccepting(fmt.Sprintf("127.0.0.1:%d", dead), 0) {
		t.Fatalf("port %d accepts connections", dead)
	}
	stopFleet := publishFleet(t, nodes[1].URL, instances, fmt.Sprintf("http://127.0.0.1:%d", dead))
	defer stopFleet()
	_ = app2

	counter := countSubjects(t, nodes[2].URL)
	type row struct {
		name       string
		cpu, rss   []float64 // per gateway: % of a core, MiB
		msgs       map[string]float64
		varzPerSec float64
	}
	var rows []row
	// The last two: round-robin over all 1,002 under 100 GETs/s per
	// gateway, so that requests keep trying dead fakes (fail_timeout 2s):
	// the most failures, hence observations, there can be.
	const failing = "\npolicy round_robin\nfail_timeout 2s"
	for _, cfg := range []struct {
		name  string
		n     int
		extra string
		load  bool
	}{
		{"1 gateway, idle", 1, "share_failures on", false},
		{"3 gateways, idle, share_failures on", 3, "share_failures on", false},
		{"3 gateways, idle, share_failures off", 3, "share_failures off", false},
		{"3 gateways, failures under load, share_failures on", 3, "share_failures on" + failing, true},
		{"3 gateways, failures under load, share_failures off", 3, "share_failures off" + failing, true},
	} {
		gws := startFleet(t, nodes, cfg.n, fleetOptions{bin: bins.caddyPlain,
			proxyExtra: "max_instances 2000\n" + cfg.extra})
		if !cfg.load {
			waitAllRouteTo(t, gws, 10*time.Second, "app1")
		}
		waitFor(t, 20*time.Second, "every gateway to know the 1,000 instances", func() bool {
			for _, g := range gws {
				var doc struct {
					Services []struct {
						InstanceCount int `json:"instance_count"`
					} `json:"services"`
				}
				if getJSON("http://"+g.AdminAddr+"/cx/instances?limit=1", &doc) != nil || len(doc.Services) != 1 || doc.Services[0].InstanceCount < instances+2 {
					return false
				}
			}
			return true
		})
		time.Sleep(3 * time.Second) // settle: discovery answered, first heartbeats of each gateway
		cpu0 := make([]float64, len(gws))
		for i, g := range gws {
			cpu0[i] = cpuSecondsOf(g.Pid())
		}
		var loads fleetLoads
		if cfg.load {
			loads = startFleetLoads(t, gws, "/", fleetLoadEvery)
		}
		varz0 := varzInMsgs(nodes)
		counter.reset()
		start := time.Now()
		time.Sleep(window)
		el := time.Since(start).Seconds()
		for i, rs := range loads.Stop() {
			t.Logf("%s: load through %s: %s", cfg.name, gws[i].ID, rs.Summary())
		}
		r := row{name: cfg.name, msgs: map[string]float64{}, varzPerSec: (varzInMsgs(nodes) - varz0) / el}
		for kind, n := range counter.snapshot() {
			r.msgs[kind] = float64(n) / el
		}
		for i, g := range gws {
			r.cpu = append(r.cpu, (cpuSecondsOf(g.Pid())-cpu0[i])/el*100)
			rss, _ := rssOf(g.Pid())
			r.rss = append(r.rss, mib(rss))
		}
		rows = append(rows, r)
		t.Logf("%s: CPU %% of a core per gateway %s, RSS MiB %s; NATS msgs/s by subject %s; nodes' in_msgs/s %.0f",
			r.name, floats(r.cpu), floats(r.rss), formatRates(r.msgs), r.varzPerSec)
		for _, g := range gws {
			g.Kill()
		}
	}
	_ = app1

	var b strings.Builder
	fmt.Fprintf(&b, "\n%d instances heartbeating every 1s, %v per configuration, plain build, 2 cores shared with the NATS nodes and the publisher\n\n", instances, window)
	fmt.Fprintf(&b, "| configuration | CPU per gateway (%% of a core) | RSS per gateway (MiB) | hb msg/s | gw msg/s | obs msg/s | $KV/$JS msg/s | all msg/s (subscriber) | in_msgs/s (3 nodes) |\n")
	fmt.Fprintf(&b, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		var all float64
		for _, v := range r.msgs {
			all += v
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.0f | %.1f | %.1f | %.1f | %.0f | %.0f |\n", r.name, floats(r.cpu), floats(r.rss),
			r.msgs["hb"], r.msgs["gw"], r.msgs["obs"], r.msgs["$KV"]+r.msgs["$JS"], all, r.varzPerSec)
	}
	if len(rows) == 5 {
		alone := rows[0].cpu[0]
		fmt.Fprintf(&b, "\nidle: added CPU per gateway in a fleet of 3 (share_failures on) over one gateway alone: %+.2f%% of a core (mean of the three)\n",
			mean(rows[1].cpu)-alone)
		fmt.Fprintf(&b, "idle: share_failures on vs off: %+.2f%% of a core\n", mean(rows[1].cpu)-mean(rows[2].cpu))
		fmt.Fprintf(&b, "failures under load: share_failures on vs off: %+.2f%% of a core, %+.1f observation msg/s\n",
			mean(rows[3].cpu)-mean(rows[4].cpu), rows[3].msgs["obs"]-rows[4].msgs["obs"])
	}
	t.Log(b.String())
}

// publishFleet publishes a heartbeat for each of n instances every second,
// spread over the second, all pointing at url with priority 10; it
// returns a function that stops it.
func publishFleet(t testing.TB, natsURL string, n int, url string) func() {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Name("fleet publisher"), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now().UTC().Format(time.RFC3339Nano)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer nc.Close()
		for seq := int64(1); ; seq++ {
			begin := time.Now()
			for i := range n {
				if i%50 == 0 {
					select {
					case <-stop:
						return
					case <-time.After(time.Until(begin.Add(time.Duration(i) * time.Second / time.Duration(n)))):
					}
				}
				id := fmt.Sprintf("fake-%04d", i)
				msg := fmt.Sprintf(`{"proto":1,"id":%q,"url":%q,"state":"ready","started_at":%q,"seq":%d,"interval_ms":1000,"version":"cost","priority":10}`,
					id, url, started, seq)
				_ = nc.Publish(fleetPrefix+".hb."+id, []byte(msg))
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Until(begin.Add(time.Second))):
			}
		}
	})
	var once sync.Once
	return func() { once.Do(func() { close(stop); wg.Wait() }) }
}

// subjectCounter counts the messages a subscriber on `>` sees, by kind:
// the token after the prefix for cx.ha.* (hb, gw, obs, discover), else
// the first token ($KV, $JS, _INBOX, ...).
type subjectCounter struct {
	mu     sync.Mutex
	counts map[string]int64
	total  atomic.Int64
}

func countSubjects(t testing.TB, natsURL string) *subjectCounter {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Name("subject counter"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := &subjectCounter{counts: map[string]int64{}}
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		kind, _, _ := strings.Cut(m.Subject, ".")
		if rest, ok := strings.CutPrefix(m.Subject, fleetPrefix+"."); ok {
			kind, _, _ = strings.Cut(rest, ".")
		}
		c.mu.Lock()
		c.counts[kind]++
		c.mu.Unlock()
		c.total.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *subjectCounter) reset() {
	c.mu.Lock()
	c.counts = map[string]int64{}
	c.mu.Unlock()
}

func (c *subjectCounter) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

// varzInMsgs sums in_msgs of the running nodes (clients' and routes').
func varzInMsgs(nodes []*natsNode) float64 {
	var total float64
	for _, n := range nodes {
		var v struct {
			InMsgs int64 `json:"in_msgs"`
		}
		if getJSON(n.MonitorURL+"/varz", &v) == nil {
			total += float64(v.InMsgs)
		}
	}
	return total
}

// cpuSecondsOf is the CPU time (user + system) process pid used so far.
func cpuSecondsOf(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// f[0] is field 3 (state); utime is field 14, stime 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return float64(ut+st) / 100 // USER_HZ
}

func floats(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(parts, " / ")
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func formatRates(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%.1f", k, m[k])
	}
	return strings.Join(parts, " ")
}
