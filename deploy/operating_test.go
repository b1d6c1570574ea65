package deploy

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// readmeSection returns the README's section under heading (## level).
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	readme := read(t, "../README.md")
	i := strings.Index(readme, "\n## "+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no %q section", heading)
	}
	s := readme[i+1:]
	if j := strings.Index(s[3:], "\n## "); j >= 0 {
		s = s[:j+4]
	}
	return s
}

// TestReadmeOperatingLinks: every file the README's Operating section
// links exists, and the section links the dashboard, the alerts, compose,
// the Helm chart and both systemd units.
func TestReadmeOperatingLinks(t *testing.T) {
	sec := readmeSection(t, "Operating")
	links := map[string]bool{}
	for _, m := range regexp.MustCompile(`\]\(([^)#]+)\)`).FindAllStringSubmatch(sec, -1) {
		if strings.Contains(m[1], "://") {
			continue
		}
		links[m[1]] = true
		if _, err := os.Stat("../" + m[1]); err != nil {
			t.Errorf("README Operating links %s: %v", m[1], err)
		}
	}
	for _, want := range []string{
		"deploy/grafana/caddy-cx.json", "deploy/prometheus/alerts.yml", "docker-compose.yml",
		"deploy/helm/caddy-cx", "deploy/systemd/caddy-cx.service", "deploy/systemd/caddy-cx-announce@.service",
	} {
		if !links[want] {
			t.Errorf("README Operating does not link %s", want)
		}
	}
}

// TestReadmeMetricsSite: the metrics site the README shows is the one
// deploy/Caddyfile runs (TestGatewayMetricsSite runs it).
func TestReadmeMetricsSite(t *testing.T) {
	block := regexp.MustCompile("(?s)```caddyfile\n(:9180 \\{.*?\n\\})\n```").FindStringSubmatch(readmeSection(t, "Operating"))
	if block == nil {
		t.Fatal("README Operating shows no :9180 site")
	}
	if !strings.Contains(read(t, "Caddyfile"), block[1]) {
		t.Errorf("README's metrics site differs from deploy/Caddyfile's:\n%s", block[1])
	}
}
