package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Helpers of the fleet scenarios (fleet_test.go): several gateways on one
// NATS cluster with JetStream, the admin API's control calls
// (POST /cx/instances/<id>/drain|maintenance|ready) and fleet view
// (GET /cx/gateways), and each gateway's primary.

// fleetPrefix is the subject prefix of the fleet scenarios (cx_proxy's
// default).
const fleetPrefix = "cx.ha"

// fleetGateway is one gateway of a fleet.
type fleetGateway struct {
	*gateway
	ID string // its gateway_id
}

// fleetCaddyfile is the config of gateway id: the cluster's client URLs,
// one site with cx_proxy (stale_after 1s, proxyExtra inside the block) and
// siteExtra in the site block.
func fleetCaddyfile(id string, natsURLs []string, proxyExtra, siteExtra string) string {
	if proxyExtra != "" {
		proxyExtra = "\n\t\t" + strings.TrimSpace(strings.ReplaceAll(proxyExtra, "\n", "\n\t\t"))
	}
	if siteExtra != "" {
		siteExtra = "\n\t" + strings.TrimSpace(siteExtra)
	}
	return fmt.Sprintf(`{
	admin %s
	cx {
		nats %s
		gateway_id %s
	}
}

http://%s {
	cx_proxy {
		stale_after 1s%s
	}%s
}
`, AdminAddr, strings.Join(natsURLs, " "), id, SiteAddr, proxyExtra, siteExtra)
}

// fleetOptions shape startFleet's gateways.
type fleetOptions struct {
	// bin is the caddy-cx binary; default the race-built one.
	bin string
	// proxyExtra goes into every gateway's cx_proxy block.
	proxyExtra string
	// siteExtra returns what goes into gateway i's (0-based) site block.
	siteExtra func(i int) string
}

// startFleet starts n gateways gw1..gwN, each connected to every node of
// the cluster, and waits until each lists all n gateways as active in
// GET /cx/gateways.
func startFleet(t testing.TB, nodes []*natsNode, n int, o fleetOptions) []*fleetGateway {
	t.Helper()
	if o.bin == "" {
		o.bin = bins.caddy
	}
	urls := clusterURLs(nodes)
	gws := make([]*fleetGateway, n)
	for i := range gws {
		id := fmt.Sprintf("gw%d", i+1)
		site := ""
		if o.siteExtra != nil {
			site = o.siteExtra(i)
		}
		gws[i] = &fleetGateway{ID: id, gateway: startGatewayNamed(t, id, o.bin, fleetCaddyfile(id, urls, o.proxyExtra, site))}
	}
	waitFleetActive(t, gws, 15*time.Second)
	return gws
}

// waitFleetActive waits until every gateway of gws lists each of them as
// active.
func waitFleetActive(t testing.TB, gws []*fleetGateway, timeout time.Duration) {
	t.Helper()
	var last string
	if !poll(timeout, func() bool {
		for _, g := range gws {
			doc, err := g.gateways()
			if err != nil {
				last = fmt.Sprintf("%s: %v", g.ID, err)
				return false
			}
			for _, other := range gws {
				if st := doc.gateway(fleetPrefix, other.ID); st == nil || st.State != "active" {
					last = fmt.Sprintf("%s lists %s as %v", g.ID, other.ID, st)
					return false
				}
			}
		}
		return true
	}) {
		t.Fatalf("the %d gateways do not all list each other as active after %v; last: %s", len(gws), timeout, last)
	}
}

// ------------------------------------------------------- control API

// controlAnswer is the JSON of a 200 answer to POST
// /cx/instances/<id>/<action>.
type controlAnswer struct {
	Service  string    `json:"service"`
	ID       string    `json:"id"`
	State    string    `json:"state"`
	By       string    `json:"by"`
	Gateway  string    `json:"gateway"`
	At       time.Time `json:"at"`
	Revision uint64    `json:"revision"`
}

// controlError is a control call's answer other than 200.
type controlError struct {
	Status int
	Body   string
}

func (e *controlError) Error() string {
	return fmt.Sprintf("status %d: %s", e.Status, truncate(strings.TrimSpace(e.Body), 300))
}

// control calls POST /cx/instances/<id>/<action>?service=<service> (no
// service parameter if service is "") and returns the answer and when
// the call returned.
func (g *gateway) control(id, action, service string) (controlAnswer, time.Time, error) {
	var ans controlAnswer
	u := fmt.Sprintf("http://%s/cx/instances/%s/%s", g.AdminAddr, url.PathEscape(id), action)
	if service != "" {
		u += "?service=" + url.QueryEscape(service)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post(u, "", nil)
	returned := time.Now()
	if err != nil {
		return ans, returned, err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return ans, returned, err
	}
	if resp.StatusCode != http.StatusOK {
		return ans, returned, &controlError{Status: resp.StatusCode, Body: string(body)}
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return ans, returned, fmt.Errorf("POST %s: answer %q: %v", u, truncate(string(body), 200), err)
	}
	return ans, returned, nil
}

// mustControl is control that fails the test on an error, and checks the
// answer names what was asked.
func (g *fleetGateway) mustControl(t testing.TB, id, action string) (controlAnswer, time.Time) {
	t.Helper()
	ans, at, err := g.control(id, action, fleetPrefix)
	if err != nil {
		t.Fatalf("%s: POST /cx/instances/%s/%s: %v", g.ID, id, action, err)
	}
	if ans.ID != id || ans.State != action || ans.Gateway != g.ID || ans.Service != fleetPrefix {
		t.Errorf("%s: POST /cx/instances/%s/%s answered %+v; want id %s, state %s, gateway %s, service %s",
			g.ID, id, action, ans, id, action, g.ID, fleetPrefix)
	}
	return ans, at
}

// -------------------------------------------------------- fleet view

// gatewayStatus is one gateway in GET /cx/gateways, decoded as a client
// would (docs/METRICS.md), not with the gateway's own type.
type gatewayStatus struct {
	ID                  string    `json:"id"`
	Self                bool      `json:"self"`
	State               string    `json:"state"`
	Version             string    `json:"version"`
	StartedAt           time.Time `json:"started_at"`
	UptimeSeconds       float64   `json:"uptime_seconds"`
	HeartbeatAgeSeconds float64   `json:"heartbeat_age_seconds"`
	StaleAfterSeconds   float64   `json:"stale_after_seconds"`
	NATSServer          string    `json:"nats_server"`
	NATSConnected       bool      `json:"nats_connected"`
	Primary             []string  `json:"primary"`
	InFlight            int64     `json:"inflight"`
	Control             bool      `json:"control"`
}

func (s *gatewayStatus) String() string {
	if s == nil {
		return "absent"
	}
	return fmt.Sprintf("%s (started %s, heartbeat age %.1fs, primary %v, nats %s)", s.State,
		s.StartedAt.Format(time.RFC3339Nano), s.HeartbeatAgeSeconds, s.Primary, s.NATSServer)
}

// gatewaysDoc is the JSON of GET /cx/gateways.
type gatewaysDoc struct {
	Services []struct {
		SubjectPrefix string          `json:"subject_prefix"`
		Gateways      []gatewayStatus `json:"gateways"`
		SplitView     bool            `json:"split_view"`
		SplitSince    *time.Time      `json:"split_since"`
		Versions      json.RawMessage `json:"versions"`
		Warnings      []string        `json:"warnings"`
	} `json:"services"`
	GeneratedAt time.Time `json:"generated_at"`
	GatewayID   string    `json:"gateway_id"`
}

// gateway returns gateway id of the service prefix, nil if not listed.
func (d gatewaysDoc) gateway(prefix, id string) *gatewayStatus {
	for _, s := range d.Services {
		if s.SubjectPrefix != prefix {
			continue
		}
		for i := range s.Gateways {
			if s.Gateways[i].ID == id {
				return &s.Gateways[i]
			}
		}
	}
	return nil
}

// gateways fetches GET /cx/gateways.
func (g *gateway) gateways() (gatewaysDoc, error) {
	var doc gatewaysDoc
	err := getJSON("http://"+g.AdminAddr+"/cx/gateways", &doc)
	return doc, err
}

// primary is the sorted primary of service prefix from GET /cx/instances.
func (g *gateway) primary(prefix string) ([]string, error) {
	var doc struct {
		Services []struct {
			SubjectPrefix string   `json:"subject_prefix"`
			Primary       []string `json:"primary"`
		} `json:"services"`
	}
	if err := getJSON("http://"+g.AdminAddr+"/cx/instances?limit=50", &doc); err != nil {
		return nil, err
	}
	for _, s := range doc.Services {
		if s.SubjectPrefix == prefix {
			p := slices.Clone(s.Primary)
			sort.Strings(p)
			return p, nil
		}
	}
	return nil, fmt.Errorf("no service %s in /cx/instances", prefix)
}

// primaries reads every gateway's primary at once (one goroutine each)
// and reports whether all of them name the same (and answered).
func primaries(gws []*fleetGateway, prefix string) (out [][]string, agree bool) {
	out = make([][]string, len(gws))
	errs := make([]error, len(gws))
	var wg sync.WaitGroup
	for i, g := range gws {
		wg.Go(func() { out[i], errs[i] = g.primary(prefix) })
	}
	wg.Wait()
	for i := range out {
		if errs[i] != nil || !slices.Equal(out[i], out[0]) {
			return out, false
		}
	}
	return out, true
}

// waitAllRouteTo waits until every gateway's primary is exactly ids.
func waitAllRouteTo(t testing.TB, gws []*fleetGateway, timeout time.Duration, ids ...string) {
	t.Helper()
	want := slices.Clone(ids)
	sort.Strings(want)
	var last [][]string
	if !poll(timeout, func() bool {
		ps, agree := primaries(gws, fleetPrefix)
		last = ps
		return agree && slices.Equal(ps[0], want)
	}) {
		t.Fatalf("the gateways do not all name %v primary after %v; last: %v", want, timeout, last)
	}
}

// fleetLoads runs one load per gateway.
type fleetLoads []*loadGen

// startFleetLoads sends GET path through every gateway every `every`.
func startFleetLoads(t testing.TB, gws []*fleetGateway, path string, every time.Duration) fleetLoads {
	t.Helper()
	ls := make(fleetLoads, len(gws))
	for i, g := range gws {
		ls[i] = startLoad(t, g.URL+path, every)
	}
	return ls
}

// Stop stops every load and returns each one's results.
func (ls fleetLoads) Stop() []results {
	out := make([]results, len(ls))
	for i, l := range ls {
		out[i] = l.Stop()
	}
	return out
}

// waitServed waits until each load (that of gws[i]) had n responses from
// id since `since`; on a timeout it says what each gateway served and
// shows of the instances.
func (ls fleetLoads) waitServed(t testing.TB, gws []*fleetGateway, timeout time.Duration, id string, n int, since time.Time) {
	t.Helper()
	if poll(timeout, func() bool {
		for _, l := range ls {
			if l.Results().Since(since).ByInstance()[id] < n {
				return false
			}
		}
		return true
	}) {
		return
	}
	var b strings.Builder
	for i, l := range ls {
		fmt.Fprintf(&b, "%s: since then %s\n", gws[i].ID, l.Results().Since(since).Summary())
		var doc struct {
			Services []struct {
				Primary   []string          `json:"primary"`
				Instances []json.RawMessage `json:"instances"`
			} `json:"services"`
		}
		if err := getJSON("http://"+gws[i].AdminAddr+"/cx/instances", &doc); err != nil {
			fmt.Fprintf(&b, "  /cx/instances: %v\n", err)
			continue
		}
		for _, s := range doc.Services {
			fmt.Fprintf(&b, "  primary %v\n", s.Primary)
			for _, in := range s.Instances {
				fmt.Fprintf(&b, "  %s\n", truncate(string(in), 600))
			}
		}
	}
	t.Fatalf("timed out after %v waiting for %d responses from %s through every gateway:\n%s", timeout, n, id, b.String())
}

// lastStartServedByID is lastStartServedBy for any process of instance id.
func (rs results) lastStartServedByID(id string, since time.Time) time.Time {
	var last time.Time
	for _, r := range rs.Since(since) {
		if r.OK() && r.Instance == id && r.Start.After(last) {
			last = r.Start
		}
	}
	return last
}

// durations summarises repeated measurements: max and p50.
type durations []time.Duration

func (ds durations) max() time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return slices.Max(ds)
}

func (ds durations) p50() time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func (ds durations) String() string {
	return fmt.Sprintf("max %s, p50 %s over %d", ms(ds.max()), ms(ds.p50()), len(ds))
}

// failedRecord is a testbackend's GET /admin/failed.
type failedRecord struct {
	Count int64     `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

func (b *backend) failed() (failedRecord, error) {
	var rec failedRecord
	err := getJSON(b.URL+"/admin/failed", &rec)
	return rec, err
}

// failFor makes b answer status to the requests that carry header (every
// request if header is "") for d.
func (b *backend) failFor(t testing.TB, d time.Duration, status int, header string) {
	t.Helper()
	u := fmt.Sprintf("%s/admin/fail?ms=%d&status=%d", b.URL, d.Milliseconds(), status)
	if header != "" {
		u += "&header=" + url.QueryEscape(header)
	}
	resp, err := http.Post(u, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: status %d", u, resp.StatusCode)
	}
}

// envDuration is the duration the environment variable name sets (at
// least 1s), or def.
func envDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second {
		t.Fatalf("%s=%q: want a duration of at least 1s, like 10s", name, v)
	}
	return d
}
