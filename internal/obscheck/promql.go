package obscheck

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Selector is one vector selector of an expression: a metric name (empty
// for `{__name__=...}`) and the label names its matchers use.
type Selector struct {
	Metric string
	Labels []string
}

// Expr is what an expression refers to: its selectors and the labels named
// in by, without, on, ignoring, group_left and group_right.
type Expr struct {
	Selectors []Selector
	Grouping  []string
}

// Metrics returns the metric names of e, in order, without repeats.
func (e Expr) Metrics() []string {
	var out []string
	for _, s := range e.Selectors {
		if s.Metric != "" && !slices.Contains(out, s.Metric) {
			out = append(out, s.Metric)
		}
	}
	return out
}

// Aggregation operators (they may be followed by a grouping clause rather
// than by their parenthesis).
var aggregators = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// keywords are words that are neither metric names nor functions.
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
}

// groupings take a parenthesised list of label names.
var groupings = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// ParseExpr reads the metric and label names of a PromQL expression. It is
// not a full parser: it knows enough of the grammar (strings, range and
// subquery brackets, matchers, grouping clauses, functions, Grafana's
// $variables) to tell metric names from everything else, and reports
// malformed matchers and unbalanced brackets.
func ParseExpr(s string) (Expr, error) {
	var e Expr
	depth := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case c == '#': // comment to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j, err := skipString(s, i)
			if err != nil {
				return e, err
			}
			i = j
		case c == '[': // a range or subquery: durations and variables only
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return e, fmt.Errorf("unclosed [ at offset %d", i)
			}
			i += j + 1
		case c == '$': // a Grafana variable: $name or ${name...}
			i++
			if i < len(s) && s[i] == '{' {
				j := strings.IndexByte(s[i:], '}')
				if j < 0 {
					return e, fmt.Errorf("unclosed ${ at offset %d", i)
				}
				i += j + 1
				continue
			}
			for i < len(s) && isIdent(s[i]) {
				i++
			}
		case c == '{':
			labels, j, err := matchers(s, i)
			if err != nil {
				return e, err
			}
			e.Selectors = append(e.Selectors, Selector{Labels: labels})
			i = j
		case c == '(':
			depth++
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return e, fmt.Errorf("unbalanced ) at offset %d", i)
			}
			i++
		case isIdentStart(c):
			j := i
			for j < len(s) && (isIdent(s[j]) || s[j] == ':') {
				j++
			}
			word := s[i:j]
			k := skipSpace(s, j)
			next := byte(0)
			if k < len(s) {
				next = s[k]
			}
			switch {
			case groupings[word]:
				i = j
				if next == '(' {
					list, end, err := labelList(s, k)
					if err != nil {
						return e, err
					}
					e.Grouping = append(e.Grouping, list...)
					i = end
				}
			case keywords[word] || aggregators[word] || next == '(':
				i = j // an operator or a function
			default:
				sel := Selector{Metric: word}
				i = j
				if next == '{' {
					labels, end, err := matchers(s, k)
					if err != nil {
						return e, err
					}
					sel.Labels = labels
					i = end
				}
				e.Selectors = append(e.Selectors, sel)
			}
		case c >= '0' && c <= '9' || c == '.': // a number or a duration
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case strings.IndexByte("+-*/%^=!<>~,:@", c) >= 0:
			i++
		default:
			return e, fmt.Errorf("unexpected %q at offset %d", c, i)
		}
	}
	if depth != 0 {
		return e, fmt.Errorf("%d unclosed (", depth)
	}
	return e, nil
}

// matchers reads `{name op "value", ...}` at s[i] == '{' and returns the
// label names and the offset after the closing brace.
func matchers(s string, i int) ([]string, int, error) {
	var labels []string
	i++
	for {
		i = skipSpace(s, i)
		if i >= len(s) {
			return nil, i, fmt.Errorf("unclosed { in %q", s)
		}
		if s[i] == '}' {
			return labels, i + 1, nil
		}
		j := i
		for j < len(s) && isIdent(s[j]) {
			j++
		}
		if j == i {
			return nil, i, fmt.Errorf("label name expected at offset %d of %q", i, s)
		}
		labels = append(labels, s[i:j])
		i = skipSpace(s, j)
		switch {
		case strings.HasPrefix(s[i:], "=~"), strings.HasPrefix(s[i:], "!~"), strings.HasPrefix(s[i:], "!="):
			i += 2
		case strings.HasPrefix(s[i:], "="):
			i++
		default:
			return nil, i, fmt.Errorf("matcher operator expected after %q in %q", labels[len(labels)-1], s)
		}
		i = skipSpace(s, i)
		if i >= len(s) || (s[i] != '"' && s[i] != '\'' && s[i] != '`') {
			return nil, i, fmt.Errorf("quoted value expected after %q in %q", labels[len(labels)-1], s)
		}
		end, err := skipString(s, i)
		if err != nil {
			return nil, i, err
		}
		i = skipSpace(s, end)
		if i < len(s) && s[i] == ',' {
			i++
		}
	}
}

// labelList reads `(a, b)` at s[i] == '('.
func labelList(s string, i int) ([]string, int, error) {
	end := strings.IndexByte(s[i:], ')')
	if end < 0 {
		return nil, i, fmt.Errorf("unclosed grouping list in %q", s)
	}
	var out []string
	for _, name := range strings.Split(s[i+1:i+end], ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !validLabel(name) {
			return nil, i, fmt.Errorf("%q in a grouping list is not a label name", name)
		}
		out = append(out, name)
	}
	return out, i + end + 1, nil
}

func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1, nil
		}
	}
	return i, fmt.Errorf("unclosed string at offset %d of %q", i, s)
}

func skipSpace(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

func validLabel(s string) bool {
	if s == "" || !isIdentStart(s[0]) {
		return false
	}
	for i := range len(s) {
		if !isIdent(s[i]) {
			return false
		}
	}
	return true
}

// legendLabels finds the label names of a Grafana legend ({{name}}).
var legendLabels = regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`)

// annotationLabels finds the label names of an alert template
// ($labels.name).
var annotationLabels = regexp.MustCompile(`\$labels\.([A-Za-z_][A-Za-z0-9_]*)`)

// LegendLabels returns the label names a Grafana legend format refers to.
func LegendLabels(s string) []string { return submatches(legendLabels, s) }

// AnnotationLabels returns the label names an alert rule's annotation or
// label template refers to.
func AnnotationLabels(s string) []string { return submatches(annotationLabels, s) }

func submatches(re *regexp.Regexp, s string) []string {
	var out []string
	for _, m := range re.FindAllStringSubmatch(s, -1) {
		for _, g := range m[1:] {
			if g != "" && !slices.Contains(out, g) {
				out = append(out, g)
			}
		}
	}
	return out
}
