package caddycx_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestXcaddyBuild runs the README's xcaddy line (with xcaddy v0.4.5, this
// module's tool) and checks that the Caddy it builds has every caddy-cx
// module and both subcommands: what a user outside this repository gets.
func TestXcaddyBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: building a whole Caddy takes minutes")
	}
	args := readmeXcaddyLine(t)
	out := filepath.Join(t.TempDir(), "caddy")
	cmd := exec.Command("go", append([]string{"tool"}, append(args, "--output", out)...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(b), "dial tcp") || strings.Contains(string(b), "no such host") {
			t.Skipf("the Go module proxy is unreachable, so xcaddy cannot fetch Caddy: %s", lastLine(b))
		}
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, b)
	}
	modules := run(t, out, "list-modules")
	for _, id := range []string{"cx", "http.reverse_proxy.upstreams.cx", "http.reverse_proxy.selection_policies.cx_failover",
		"http.reverse_proxy.selection_policies.cx_round_robin", "http.reverse_proxy.transport.cx", "http.handlers.cx_status"} {
		if !containsLine(modules, id) {
			t.Errorf("list-modules lacks %s", id)
		}
	}
	if help := run(t, out, "announce", "--help"); !strings.Contains(help, "--id") || !strings.Contains(help, "CX_ID") {
		t.Errorf("announce --help lists no flags:\n%s", help)
	}
	if help := run(t, out, "demo", "--help"); !strings.Contains(help, "--drill") {
		t.Errorf("demo --help:\n%s", help)
	}
}

// readmeXcaddyLine returns the README's `xcaddy build ...` command as
// arguments.
func readmeXcaddyLine(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "xcaddy build ") {
			return strings.Fields(line)
		}
	}
	t.Fatal("README.md has no `xcaddy build` line")
	return nil
}

func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	b, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, b)
	}
	return string(b)
}

func containsLine(text, line string) bool {
	for l := range strings.Lines(text) {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
