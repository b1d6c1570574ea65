package obscheck

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseExpr(t *testing.T) {
	for _, tc := range []struct {
		expr      string
		selectors []Selector
		grouping  []string
	}{
		{`caddy_cx_nats_connected == 0`, []Selector{{Metric: "caddy_cx_nats_connected"}}, nil},
		{
			`sum by (service, reason) (rate(caddy_cx_retries_total{service=~"$service", instance=~"${gateway:regex}"}[$__rate_interval]))`,
			[]Selector{{Metric: "caddy_cx_retries_total", Labels: []string{"service", "instance"}}},
			[]string{"service", "reason"},
		},
		{
			// strings may hold anything, brackets hold durations, `offset`
			// and `bool` are keywords, not metrics
			`max without(job) (caddy_cx_primary{instance_id!="a}b,c=\"d\""} offset 5m) > bool 0`,
			[]Selector{{Metric: "caddy_cx_primary", Labels: []string{"instance_id"}}},
			[]string{"job"},
		},
		{
			`time() - max by (service, role) (caddy_cx_leader_role_conflict_since_timestamp_seconds)`,
			[]Selector{{Metric: "caddy_cx_leader_role_conflict_since_timestamp_seconds"}},
			[]string{"service", "role"},
		},
		{
			`a / on (service) group_left (version) b{version=~'1.*'} and {__name__="c"}`,
			[]Selector{{Metric: "a"}, {Metric: "b", Labels: []string{"version"}}, {Labels: []string{"__name__"}}},
			[]string{"service", "version"},
		},
		{
			"sum(increase(x[1h:5m])) # a comment naming y\n+ 1e3 * z",
			[]Selector{{Metric: "x"}, {Metric: "z"}},
			nil,
		},
	} {
		e, err := ParseExpr(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if !reflect.DeepEqual(e.Selectors, tc.selectors) || !reflect.DeepEqual(e.Grouping, tc.grouping) {
			t.Errorf("%s:\n got %+v %v\nwant %+v %v", tc.expr, e.Selectors, e.Grouping, tc.selectors, tc.grouping)
		}
	}
}

func TestParseExprRefusesMalformed(t *testing.T) {
	for _, expr := range []string{
		`sum(rate(x[5m])`,  // unclosed (
		`x{a="b"`,          // unclosed {
		`x{a~"b"}`,         // no operator
		`x{a=b}`,           // unquoted value
		`x{a="b}`,          // unclosed string
		`rate(x[5m)`,       // unclosed [
		`sum by (a-b) (x)`, // not a label name
		`x) + (y`,          // unbalanced
		`x ; y`,            // not PromQL
	} {
		if _, err := ParseExpr(expr); err == nil {
			t.Errorf("%s: parsed, want an error", expr)
		}
	}
}

func TestCheckFindsWrongNames(t *testing.T) {
	families := SpecLabels()
	ok := Query{Where: "ok", Expr: `sum by (service, instance_id) (rate(caddy_cx_upstream_requests_total{code_class="5xx", job="caddy"}[5m]))`,
		Labels: []string{"instance_id", "instance"}}
	if p := Check(ok, families); len(p) != 0 {
		t.Errorf("a correct query has problems: %v", p)
	}
	for _, tc := range []struct {
		q    Query
		want string
	}{
		{Query{Where: "w", Expr: `caddy_cx_served_version`}, "metric caddy_cx_served_version does not exist"},
		{Query{Where: "w", Expr: `caddy_cx_primary{instance_id="a", reason="x"}`}, "caddy_cx_primary has no label reason"},
		{Query{Where: "w", Expr: `sum by (code) (caddy_cx_upstream_requests_total)`}, "label code is on none of"},
		{Query{Where: "w", Expr: `caddy_cx_retries_total`, Labels: []string{"instance_id"}}, "label instance_id is on none of"},
		{Query{Where: "w", Expr: `vector(1)`}, "names no metric"},
	} {
		p := Check(tc.q, families)
		if len(p) != 1 || !strings.Contains(p[0], tc.want) {
			t.Errorf("%s: problems %q, want one containing %q", tc.q.Expr, p, tc.want)
		}
	}
}

func TestTemplateLabels(t *testing.T) {
	if got := LegendLabels("{{service}} {{ instance_id }} {{service}}"); !reflect.DeepEqual(got, []string{"service", "instance_id"}) {
		t.Errorf("legend labels %v", got)
	}
	if got := AnnotationLabels(`{{ $labels.service }} on {{ $labels.instance }}: {{ $value }}{{ end }}`); !reflect.DeepEqual(got, []string{"service", "instance"}) {
		t.Errorf("annotation labels %v", got)
	}
}

func TestSpecIsConsistent(t *testing.T) {
	for name, f := range Families {
		if (f.Type == "counter") != strings.HasSuffix(name, "_total") {
			t.Errorf("%s: type %s", name, f.Type)
		}
		for _, l := range f.Labels {
			for _, target := range TargetLabels {
				if l == target {
					t.Errorf("%s: label %s collides with Prometheus's target label", name, l)
				}
			}
		}
	}
	for name, byLabel := range Preinitialised {
		f, ok := Families[name]
		if !ok || f.Type != "counter" {
			t.Errorf("pre-initialised %s is not a counter of the contract", name)
		}
		for label, values := range byLabel {
			seen := map[string]bool{}
			for _, v := range values {
				if seen[v] {
					t.Errorf("%s{%s}: %q twice", name, label, v)
				}
				seen[v] = true
			}
			if name == "caddy_cx_membership_events_total" && seen["rejected"] {
				t.Errorf("membership_events_total must not count rejections: heartbeats_rejected_total does")
			}
		}
	}
}

// TestMetricsDocMatchesTheContract keeps docs/METRICS.md's table in step
// with the contract: every family documented with its type and labels, and
// the names renamed away mentioned only in the deprecation note.
func TestMetricsDocMatchesTheContract(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "METRICS.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for name, f := range Families {
		row := "| `" + name + "` | " + f.Type + " | "
		i := strings.Index(doc, row)
		if i < 0 {
			t.Errorf("docs/METRICS.md has no table row %q", row)
			continue
		}
		line := doc[i:]
		line = line[:strings.IndexByte(line, '\n')]
		cells := strings.Split(line, "|") // "", name, type, labels, meaning, ""
		var labels []string
		for _, l := range strings.Split(cells[3], ",") {
			if l = strings.Trim(l, "` "); l != "" {
				labels = append(labels, l)
			}
		}
		slices.Sort(labels)
		if !slices.Equal(labels, f.Labels) {
			t.Errorf("docs/METRICS.md: %s labels %v, contract %v", name, labels, f.Labels)
		}
	}
	note := strings.Index(doc, "### Renamed metrics")
	end := strings.Index(doc[note+1:], "\n### ")
	if note < 0 || end < 0 {
		t.Fatal("docs/METRICS.md has no deprecation note section")
	}
	outside := doc[:note] + doc[note+1+end:]
	for _, old := range []string{"leader_role_conflict_since_seconds", "caddy_cx_served_version`", "caddy_cx_served_version{", `event="rejected"`, "honor_labels: true"} {
		if strings.Contains(outside, old) {
			t.Errorf("docs/METRICS.md uses %q outside the deprecation note", old)
		}
	}
}

func TestDashboardQueries(t *testing.T) {
	data := []byte(`{
		"panels": [
			{"title": "a", "targets": [{"refId": "A", "expr": "x{service=~\"$service\"}", "legendFormat": "{{instance_id}}"}]},
			{"type": "row", "title": "collapsed", "panels": [{"title": "b", "targets": [{"refId": "B", "expr": "rate(y[5m])"}]}]}
		],
		"templating": {"list": [
			{"name": "datasource", "type": "datasource", "query": "prometheus"},
			{"name": "service", "type": "query", "query": "label_values(x, service)"},
			{"name": "gateway", "type": "query", "query": {"query": "label_values(z{job=\"cx\"}, instance)", "refId": "V"}}
		]}
	}`)
	qs, err := DashboardQueries(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []Query{
		{Where: `panel "a" target A`, Expr: `x{service=~"$service"}`, Labels: []string{"instance_id"}},
		{Where: `panel "b" target B`, Expr: `rate(y[5m])`},
		{Where: `variable "service"`, Expr: `x`, Labels: []string{"service"}},
		{Where: `variable "gateway"`, Expr: `z{job="cx"}`, Labels: []string{"instance"}},
	}
	if !reflect.DeepEqual(qs, want) {
		t.Errorf("queries\n got %+v\nwant %+v", qs, want)
	}
	if _, err := DashboardQueries([]byte(`{"templating": {"list": [{"name": "v", "type": "query", "query": "query_result(x)"}]}}`)); err == nil {
		t.Error("a variable that is not label_values was accepted")
	}
}

func TestRuleQueries(t *testing.T) {
	qs, err := RuleQueries([]byte(`
groups:
  - name: g
    rules:
      - alert: A
        expr: sum by (service) (x) > 0
        labels: {severity: warning}
        annotations: {summary: "{{ $labels.service }} on {{ $labels.instance }}"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 1 || qs[0].Expr != "sum by (service) (x) > 0" || !reflect.DeepEqual(qs[0].Labels, []string{"service", "instance"}) {
		t.Errorf("rule queries %+v", qs)
	}
	if _, err := RuleQueries([]byte("groups:\n  - name: g\n    rules:\n      - alert: A\n        exp: x\n")); err == nil {
		t.Error("a misspelt key (exp) was accepted")
	}
}
