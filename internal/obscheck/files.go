package obscheck

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Query is one PromQL expression of a dashboard or rule file.
type Query struct {
	Where string // which panel, variable or rule, for messages
	Expr  string
	// Labels are the label names shown or listed beside the expression:
	// its legend, its annotations, or what label_values lists.
	Labels []string
}

// DashboardQueries returns the queries of a Grafana dashboard's panels
// (rows' nested panels included) and query variables.
func DashboardQueries(data []byte) ([]Query, error) {
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("dashboard: %v", err)
	}
	var out []Query
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				out = append(out, Query{
					Where:  fmt.Sprintf("panel %q target %s", p.Title, t.RefID),
					Expr:   t.Expr,
					Labels: LegendLabels(t.LegendFormat),
				})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				return nil, fmt.Errorf("variable %q: query is neither a string nor {query}", v.Name)
			}
			q = obj.Query
		}
		where := fmt.Sprintf("variable %q", v.Name)
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			return nil, fmt.Errorf("%s: %q is not label_values(<selector>, <label>)", where, q)
		}
		out = append(out, Query{Where: where, Expr: m[1], Labels: []string{m[2]}})
	}
	return out, nil
}

type panel struct {
	Title   string `json:"title"`
	Targets []struct {
		RefID        string `json:"refId"`
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)

// RuleFile is a Prometheus rule file.
type RuleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []Rule `yaml:"rules"`
	} `yaml:"groups"`
}

// Rule is one alerting or recording rule.
type Rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// ParseRules decodes a rule file, refusing unknown keys.
func ParseRules(data []byte) (*RuleFile, error) {
	var f RuleFile
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("rules: %v", err)
	}
	return &f, nil
}

// RuleQueries returns the expressions of a rule file, with the labels its
// annotations and labels refer to.
func RuleQueries(data []byte) ([]Query, error) {
	f, err := ParseRules(data)
	if err != nil {
		return nil, err
	}
	var out []Query
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			q := Query{Where: fmt.Sprintf("rule %s%s", r.Alert, r.Record), Expr: r.Expr}
			for _, m := range []map[string]string{r.Labels, r.Annotations} {
				for _, k := range slices.Sorted(maps.Keys(m)) {
					for _, l := range AnnotationLabels(m[k]) {
						if !slices.Contains(q.Labels, l) {
							q.Labels = append(q.Labels, l)
						}
					}
				}
			}
			out = append(out, q)
		}
	}
	return out, nil
}

// SpecLabels returns the contract's families as name -> label names.
func SpecLabels() map[string][]string {
	out := map[string][]string{}
	for name, f := range Families {
		out[name] = f.Labels
	}
	return out
}

// Check returns what is wrong with q against families (metric name ->
// label names): a metric that does not exist, a matcher, grouping, legend
// or annotation label that none of its metrics has (Prometheus's target
// labels are always there), or an expression that does not parse.
func Check(q Query, families map[string][]string) []string {
	e, err := ParseExpr(q.Expr)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", q.Where, err)}
	}
	var problems []string
	if len(e.Metrics()) == 0 {
		problems = append(problems, fmt.Sprintf("%s: %q names no metric", q.Where, q.Expr))
	}
	have := map[string]bool{"__name__": true}
	for _, l := range TargetLabels {
		have[l] = true
	}
	for _, s := range e.Selectors {
		labels, ok := families[s.Metric]
		if s.Metric != "" && !ok {
			problems = append(problems, fmt.Sprintf("%s: metric %s does not exist", q.Where, s.Metric))
			continue
		}
		for _, l := range labels {
			have[l] = true
		}
	}
	for _, s := range e.Selectors {
		labels, ok := families[s.Metric]
		if !ok {
			continue // reported above, or no metric name
		}
		for _, l := range s.Labels {
			if l != "__name__" && !slices.Contains(labels, l) && !slices.Contains(TargetLabels, l) {
				problems = append(problems, fmt.Sprintf("%s: %s has no label %s", q.Where, s.Metric, l))
			}
		}
	}
	if len(problems) > 0 {
		return problems // labels of a metric that does not exist say nothing more
	}
	var missing []string
	for _, l := range append(append([]string(nil), e.Grouping...), q.Labels...) {
		if !have[l] && !slices.Contains(missing, l) {
			missing = append(missing, l)
		}
	}
	sort.Strings(missing)
	for _, l := range missing {
		problems = append(problems, fmt.Sprintf("%s: label %s is on none of %s", q.Where, l, strings.Join(e.Metrics(), ", ")))
	}
	return problems
}
