// Package prometheus holds no code: its tests check the alert rules
// (alerts.yml) with promtool and against the metric contract.
package prometheus

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/caddy-cx/caddy-cx/internal/obscheck"
)

// requiredAlerts are the conditions an operator must hear about.
var requiredAlerts = []string{
	"CxNoActiveInstance", "CxPrimaryChanged", "CxNATSDisconnected", "CxHeartbeatsRejected", "CxDialRefused", "CxFleetSplitView",
}

// promtool returns promtool's path. It skips the test where promtool is
// missing, except in CI (CI=true), where a missing promtool is a failure.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("promtool is not on PATH, and CI=true requires it: install it (Debian: apt-get install -y prometheus)")
	}
	t.Skip("promtool is not on PATH (Debian: apt-get install -y prometheus); the alert rules are not checked")
	return ""
}

func TestAlertRulesPassPromtool(t *testing.T) {
	tool := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		out, err := exec.Command(tool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestAlertRulesFollowTheContract checks what promtool cannot: that the
// rules name metrics and labels the gateway exports, that every required
// condition has an alert, and that every alert has a unit test that sees
// it fire.
func TestAlertRulesFollowTheContract(t *testing.T) {
	data, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	queries, err := obscheck.RuleQueries(data)
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, q := range queries {
		problems = append(problems, obscheck.Check(q, obscheck.SpecLabels())...)
	}
	rules, err := obscheck.ParseRules(data)
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Alert == "" {
				problems = append(problems, "a rule without alert: "+r.Expr)
			}
			if sev := r.Labels["severity"]; sev != "critical" && sev != "warning" {
				problems = append(problems, r.Alert+": severity "+sev+", want critical or warning")
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				problems = append(problems, r.Alert+": no summary or description")
			}
		}
	}
	for _, want := range requiredAlerts {
		if !slices.Contains(alerts, want) {
			problems = append(problems, "no alert "+want)
		}
	}

	tests, err := os.ReadFile("alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	var suite struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(tests, &suite); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(suite.RuleFiles, "alerts.yml") {
		problems = append(problems, "alerts_test.yml does not test alerts.yml")
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range suite.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, a := range alerts {
		if !fires[a] || !quiet[a] {
			problems = append(problems, a+": alerts_test.yml must see it fire and stay quiet")
		}
	}
	if len(problems) > 0 {
		t.Errorf("alerts.yml:\n%s", strings.Join(problems, "\n"))
	}
}
