package caddymodule

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/obscheck"
)

const observedSite = `http://127.0.0.1:{PORT} {
	metrics /metrics
	cx_proxy {
		versions consistent
		stale_after 600ms
		forget_after 1m
		fail_timeout 1m
	}
}`

// observedGateway runs a gateway through every situation a metric family
// reports (instances joined, one stale, a rejected heartbeat, a retry and
// a failover, consistent versions, a leader role conflict) and returns
// its scrape before anything happened and after all of it.
func observedGateway(t *testing.T) (fresh, full map[string]*dto.MetricFamily) {
	t.Helper()
	natsURL := startNATS(t)
	base := gateway(t, natsURL, observedSite)
	metrics := base + "/metrics"
	nc := connect(t, natsURL)
	fresh = scrapeFamilies(t, metrics)

	app1, app2, app3 := startBackend(t, "app1"), startBackend(t, "app2"), startBackend(t, "app3")
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	i2 := newInstance(t, nc, "app2", app2.url, 1)
	i3 := newInstance(t, nc, "app3", app3.url, 2)
	i1.msg.LeaderRoles = []string{"mailer"} // two active claims: a role conflict
	i2.msg.LeaderRoles = []string{"mailer"}
	i3.beat(heartbeat.StateReady) // and never again: stale
	i1.beat(heartbeat.StateReady)
	i2.beat(heartbeat.StateReady)
	stop1, stop2 := i1.keepBeating(), i2.keepBeating()
	t.Cleanup(stop1)
	t.Cleanup(stop2)
	eventually(t, 5*time.Second, func() bool {
		m := scrape(t, metrics)
		return m[`caddy_cx_instances{service="cx.ha",state="active"}`] == 2 &&
			m[`caddy_cx_instances{service="cx.ha",state="stale"}`] == 1
	}, "app1 and app2 active, app3 stale")

	if got, code := get(t, "GET", base); got != "app1" || code != 200 {
		t.Fatalf("GET: served by %q status %d, want app1 200", got, code)
	}
	// a 503 of app1 is retried on app2 (a retry), and app2 becomes the
	// primary (a failover)
	app1.failing.Store(true)
	if got, code := get(t, "GET", base); got != "app2" || code != 200 {
		t.Fatalf("GET with app1 failing: served by %q status %d, want app2 200", got, code)
	}
	i1.raw(heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, "bogus"), []byte(`{"proto":1}`))

	eventually(t, 5*time.Second, func() bool {
		full = scrapeFamilies(t, metrics)
		return sumFamily(full, "caddy_cx_heartbeats_rejected_total") >= 1 &&
			sumFamily(full, "caddy_cx_retries_total") >= 1 &&
			sumFamily(full, "caddy_cx_failovers_total") >= 1 &&
			familyLike(full, "leader_role_conflict") != nil &&
			familyLike(full, "served_version") != nil
	}, "a rejection, a retry, a failover, a role conflict and a served version in the scrape")
	return fresh, full
}

// scrapeFamilies reads the caddy_cx_ families of a scrape.
func scrapeFamilies(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scraping %s: status %d, %v", url, resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	all, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing the scrape of %s: %v", url, err)
	}
	out := map[string]*dto.MetricFamily{}
	for name, f := range all {
		if strings.HasPrefix(name, "caddy_cx_") {
			out[name] = f
		}
	}
	return out
}

func sumFamily(fams map[string]*dto.MetricFamily, name string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}

// familyLike returns the family whose name contains part, whatever its
// suffix, so that the scenario waits for the same thing before and after
// a rename.
func familyLike(fams map[string]*dto.MetricFamily, part string) *dto.MetricFamily {
	for name, f := range fams {
		if strings.Contains(name, part) {
			return f
		}
	}
	return nil
}

func labelNames(f *dto.MetricFamily) []string {
	var out []string
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if !slices.Contains(out, l.GetName()) {
				out = append(out, l.GetName())
			}
		}
	}
	sort.Strings(out)
	return out
}

func labelValuesOf(f *dto.MetricFamily, label string) []string {
	var out []string
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && !slices.Contains(out, l.GetValue()) {
				out = append(out, l.GetValue())
			}
		}
	}
	return out
}

// TestObservability holds a live scrape to Prometheus's conventions
// (promlint, plus the ones promlint does not know), to the metric contract
// of internal/obscheck, and makes sure the Grafana dashboard and the alert
// rules query only metrics and labels the scrape has.
func TestObservability(t *testing.T) {
	fresh, full := observedGateway(t)
	families := map[string][]string{}
	for name, f := range full {
		families[name] = labelNames(f)
	}

	t.Run("promlint", func(t *testing.T) {
		var mfs []*dto.MetricFamily
		for _, name := range slices.Sorted(maps.Keys(full)) {
			mfs = append(mfs, full[name])
		}
		l := promlint.NewWithMetricFamilies(mfs)
		l.AddCustomValidations(lintTargetLabels, lintTimestamps, lintInfo)
		problems, err := l.Lint()
		if err != nil {
			t.Fatal(err)
		}
		if len(problems) > 0 {
			var lines []string
			for _, p := range problems {
				lines = append(lines, p.Metric+": "+p.Text)
			}
			t.Errorf("%d problems in the scrape:\n%s", len(problems), strings.Join(lines, "\n"))
		}
	})

	t.Run("contract", func(t *testing.T) {
		var problems []string
		for _, name := range slices.Sorted(maps.Keys(obscheck.Families)) {
			want := obscheck.Families[name]
			f, ok := full[name]
			if !ok {
				problems = append(problems, name+": missing from the scrape")
				continue
			}
			if got := strings.ToLower(f.GetType().String()); got != want.Type {
				problems = append(problems, fmt.Sprintf("%s: type %s, want %s", name, got, want.Type))
			}
			if got := labelNames(f); !slices.Equal(got, want.Labels) {
				problems = append(problems, fmt.Sprintf("%s: labels %v, want %v", name, got, want.Labels))
			}
		}
		for _, name := range slices.Sorted(maps.Keys(full)) {
			if _, ok := obscheck.Families[name]; !ok {
				problems = append(problems, name+": not in the contract (internal/obscheck, docs/METRICS.md)")
			}
		}
		// pre-initialised: present, at 0, before any event
		for _, name := range slices.Sorted(maps.Keys(obscheck.Preinitialised)) {
			for label, values := range obscheck.Preinitialised[name] {
				have := labelValuesOf(fresh[name], label)
				var missing []string
				for _, v := range values {
					if !slices.Contains(have, v) {
						missing = append(missing, v)
					}
				}
				if len(missing) > 0 {
					problems = append(problems, fmt.Sprintf("%s: %s %v not exported before the first event", name, label, missing))
				}
			}
		}
		// one counter per fact: rejections are heartbeats_rejected_total's
		if slices.Contains(labelValuesOf(full["caddy_cx_membership_events_total"], "event"), "rejected") {
			problems = append(problems, `caddy_cx_membership_events_total{event="rejected"} duplicates caddy_cx_heartbeats_rejected_total`)
		}
		// HELP names every label value
		for name, values := range map[string][]string{
			"caddy_cx_membership_events_total":   obscheck.Events,
			"caddy_cx_heartbeats_rejected_total": obscheck.RejectionReasons,
			"caddy_cx_retries_total":             obscheck.RetryReasons,
			"caddy_cx_dial_refused_total":        obscheck.DialRefusalReasons,
			"caddy_cx_fleet_messages_total":      append(slices.Clone(obscheck.FleetKinds), obscheck.FleetResults...),
		} {
			help := full[name].GetHelp()
			var missing []string
			for _, v := range values {
				if !regexp.MustCompile(`\b` + regexp.QuoteMeta(v) + `\b`).MatchString(help) {
					missing = append(missing, v)
				}
			}
			if len(missing) > 0 {
				problems = append(problems, fmt.Sprintf("%s: HELP does not name %v", name, missing))
			}
		}
		if len(problems) > 0 {
			t.Errorf("the scrape against the metric contract:\n%s", strings.Join(problems, "\n"))
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "caddy-cx.json"))
		if err != nil {
			t.Fatal(err)
		}
		queries, err := obscheck.DashboardQueries(data)
		if err != nil {
			t.Fatal(err)
		}
		checkQueries(t, "deploy/grafana/caddy-cx.json", queries, families)
	})

	t.Run("alerts", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "alerts.yml"))
		if err != nil {
			t.Fatal(err)
		}
		queries, err := obscheck.RuleQueries(data)
		if err != nil {
			t.Fatal(err)
		}
		checkQueries(t, "deploy/prometheus/alerts.yml", queries, families)
	})
}

func checkQueries(t *testing.T, file string, queries []obscheck.Query, families map[string][]string) {
	t.Helper()
	var problems []string
	for _, q := range queries {
		problems = append(problems, obscheck.Check(q, families)...)
	}
	if len(problems) > 0 {
		t.Errorf("%s queries against a live scrape:\n%s", file, strings.Join(problems, "\n"))
	}
}

// lintTargetLabels refuses the labels Prometheus sets on every scraped
// series: a metric's own `instance` becomes `exported_instance`, or, with
// honor_labels, erases which gateway the series came from.
func lintTargetLabels(mf *dto.MetricFamily) []error {
	var problems []error
	for _, l := range labelNames(mf) {
		if slices.Contains(obscheck.TargetLabels, l) {
			problems = append(problems, fmt.Errorf("label %q collides with the target label Prometheus sets on every scraped series", l))
		}
	}
	return problems
}

// lintTimestamps wants a Unix time named *_timestamp_seconds.
func lintTimestamps(mf *dto.MetricFamily) []error {
	name := mf.GetName()
	if (strings.Contains(strings.ToLower(mf.GetHelp()), "unix time") || strings.Contains(name, "_since")) &&
		!strings.HasSuffix(name, "_timestamp_seconds") {
		return []error{fmt.Errorf(`a Unix time should be named "_timestamp_seconds"`)}
	}
	return nil
}

// lintInfo wants a metric that carries a version (or other text) in a
// label at value 1 named *_info, and *_info to be such a gauge.
func lintInfo(mf *dto.MetricFamily) []error {
	name := mf.GetName()
	info := strings.HasSuffix(name, "_info")
	if !info && (slices.Contains(labelNames(mf), "version") || strings.HasSuffix(name, "_version")) {
		return []error{fmt.Errorf(`a metric whose label carries a version should be an info metric named "_info"`)}
	}
	if info {
		for _, m := range mf.GetMetric() {
			if mf.GetType() != dto.MetricType_GAUGE || m.GetGauge().GetValue() != 1 {
				return []error{fmt.Errorf("an info metric should be a gauge at 1")}
			}
		}
	}
	return nil
}

// TestContractTracksTheCode keeps the contract's label values in step with
// the code that produces them: every membership.EventKind but rejected is
// an event, and every rejection reason the decoder and the registry give
// is pre-initialised.
func TestContractTracksTheCode(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join("..", "membership", "events.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Values) != 1 {
			return true
		}
		if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "EventKind" {
			return true
		}
		if lit, ok := vs.Values[0].(*ast.BasicLit); ok {
			if v, err := strconv.Unquote(lit.Value); err == nil && v != "rejected" {
				kinds = append(kinds, v)
			}
		}
		return true
	})
	if len(kinds) < 10 {
		t.Fatalf("found %d event kinds in membership/events.go: the parse is wrong", len(kinds))
	}
	if a, b := slices.Sorted(slices.Values(kinds)), slices.Sorted(slices.Values(obscheck.Events)); !slices.Equal(a, b) {
		t.Errorf("event kinds in membership/events.go %v, in the contract %v", a, b)
	}

	reasons := map[string]bool{}
	scan := func(file string, re *regexp.Regexp) {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(data, -1) {
			reasons[string(m[1])] = true
		}
	}
	scan(filepath.Join("..", "heartbeat", "decode.go"), regexp.MustCompile(`(?:invalid|requiredInt)\("([a-z_]+)"`))
	scan(filepath.Join("..", "membership", "trust.go"), regexp.MustCompile(`return "([a-z_]+)", `))
	files, _ := filepath.Glob(filepath.Join("..", "membership", "*.go"))
	for _, file := range files {
		// the fleet's refusals are counted by fleet_messages_total's result
		if !strings.HasSuffix(file, "_test.go") && !strings.HasPrefix(filepath.Base(file), "fleet") {
			scan(file, regexp.MustCompile(`(?:Reason: +|reason := )"([a-z_]+)"`))
		}
	}
	delete(reasons, "")
	if len(reasons) < 15 {
		t.Fatalf("found %d rejection reasons in the code: the scan is wrong", len(reasons))
	}
	for r := range reasons {
		if !slices.Contains(obscheck.RejectionReasons, r) {
			t.Errorf("rejection reason %q is in the code but not in the contract (obscheck.RejectionReasons): it would not be pre-initialised", r)
		}
	}
}
