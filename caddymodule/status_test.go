package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// gatewayWithAdmin is gateway() with Caddy's admin API on a free port; it
// returns the site's and the admin API's base URLs.
func gatewayWithAdmin(t testing.TB, natsURL, site string) (string, string) {
	t.Helper()
	port, adminPort := freePort(t), freePort(t)
	site = strings.ReplaceAll(site, "{PORT}", fmt.Sprint(port))
	loadCaddyfile(t, fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tcx {\n\t\tnats %s\n\t}\n}\n%s\n", adminPort, natsURL, site))
	t.Cleanup(func() { _ = caddy.Stop() })
	base, admin := fmt.Sprintf("http://127.0.0.1:%d", port), fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	eventually(t, 5*time.Second, func() bool {
		resp, err := client.Get(admin + "/cx/instances")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, "admin API listening")
	return base, admin
}

func fetchReport(t testing.TB, url, accept string) (StatusReport, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", url, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: Content-Type %q, want application/json", url, ct)
	}
	var rep StatusReport
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, body)
	}
	return rep, resp.Header
}

// comparable drops what changes from one moment to the next.
func comparable(rep StatusReport) StatusReport {
	rep.GeneratedAt = time.Time{}
	for i := range rep.Services {
		for j := range rep.Services[i].Instances {
			in := &rep.Services[i].Instances[j]
			in.HeartbeatAgeSeconds, in.UptimeSeconds = 0, 0
		}
		for j := range rep.Services[i].Gateways {
			g := &rep.Services[i].Gateways[j]
			g.HeartbeatAgeSeconds, g.UptimeSeconds = 0, 0
		}
	}
	return rep
}

const statusSite = `http://127.0.0.1:{PORT} {
	cx_status /ha
	cx_proxy {
		stale_after 600ms
	}
}`

func TestAdminInstancesAndStatusJSON(t *testing.T) {
	natsURL := startNATS(t)
	base, admin := gatewayWithAdmin(t, natsURL, statusSite)
	nc := connect(t, natsURL)

	rep, _ := fetchReport(t, admin+"/cx/instances", "")
	if len(rep.Services) != 1 || rep.Services[0].SubjectPrefix != "cx.ha" || len(rep.Services[0].Instances) != 0 {
		t.Fatalf("before any instance: %s", mustJSON(rep))
	}
	if w := strings.Join(rep.Services[0].Warnings, "; "); !strings.Contains(w, "no active instance") {
		t.Errorf("warnings %q should say there is no active instance", w)
	}

	app1, app2 := startBackend(t, "app1"), startBackend(t, "app2")
	i1 := newInstance(t, nc, "app1", app1.url, 0)
	i1.msg.Version, i1.msg.LeaderRoles, i1.msg.Meta = "2026.4.1", []string{"email-dispatcher"}, map[string]string{"license": "ok"}
	i2 := newInstance(t, nc, "app2", app2.url, 1)
	i2.msg.LeaderRoles = []string{"email-dispatcher"}
	i1.beat(heartbeat.StateReady)
	i2.beat(heartbeat.StateReady)
	stop1, stop2 := i1.keepBeating(), i2.keepBeating()
	defer stop1()
	defer stop2()
	eventually(t, 2*time.Second, func() bool {
		rep, _ = fetchReport(t, admin+"/cx/instances", "")
		return len(rep.Services[0].Instances) == 2
	}, "two instances in the admin report")

	svc := rep.Services[0]
	if !svc.NATSConnected || len(svc.Primary) != 1 || svc.Primary[0] != "app1" {
		t.Errorf("service: nats_connected %v primary %v, want true [app1]", svc.NATSConnected, svc.Primary)
	}
	a := svc.Instances[0]
	if a.ID != "app1" || a.URL != app1.url || a.State != "active" || a.Version != "2026.4.1" || !a.Primary ||
		a.Priority != 0 || fmt.Sprint(a.LeaderRoles) != "[email-dispatcher]" || a.Meta["license"] != "ok" ||
		a.HeartbeatAgeSeconds < 0 || a.HeartbeatAgeSeconds > 1 || a.StartedAt.IsZero() {
		t.Errorf("app1: %s", mustJSON(a))
	}
	if b := svc.Instances[1]; b.ID != "app2" || b.Primary || b.Priority != 1 {
		t.Errorf("app2: %s", mustJSON(b))
	}
	if w := strings.Join(svc.Warnings, "; "); !strings.Contains(w, `leader role "email-dispatcher" is claimed by 2 active instances`) {
		t.Errorf("warnings %q should name the leader role claimed twice", w)
	}

	// the raw JSON has the contract's names, and arrays/objects, never null.
	resp, err := client.Get(admin + "/cx/instances")
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Services []struct {
			Instances []map[string]any `json:"instances"`
		} `json:"services"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	inst := raw.Services[0].Instances[1]
	for _, key := range []string{"id", "url", "state", "version", "started_at", "heartbeat_age_seconds", "priority", "leader_roles", "meta", "primary", "requests_in_flight", "uptime_seconds"} {
		if _, ok := inst[key]; !ok {
			t.Errorf("instance JSON lacks %q: %v", key, inst)
		}
	}
	if _, ok := inst["meta"].(map[string]any); !ok {
		t.Errorf("meta of app2 is %v, want {}", inst["meta"])
	}

	// cx_status answers the same JSON to Accept: application/json.
	viaAdmin, _ := fetchReport(t, admin+"/cx/instances", "")
	viaPage, hdr := fetchReport(t, base+"/ha", "application/json")
	if got, want := mustJSON(comparable(viaPage)), mustJSON(comparable(viaAdmin)); got != want {
		t.Errorf("cx_status JSON differs from the admin API's:\n%s\n%s", got, want)
	}
	if hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", hdr.Get("Cache-Control"))
	}

	// a browser gets the page; cx_proxy still serves everything else.
	req, _ := http.NewRequest("GET", base+"/ha", nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(page), "HA Instances") ||
		strings.Contains(string(page), "http://") && strings.Contains(string(page), "<script src") {
		t.Errorf("page: %s\n%.300s", resp.Header.Get("Content-Type"), page)
	}
	if got, code := get(t, "GET", base+"/report"); got != "app1" || code != http.StatusOK {
		t.Errorf("GET /report served by %q status %d, want app1 200", got, code)
	}

	// app1 stops: stale in the report, app2 primary, the role warning gone.
	stop1()
	eventually(t, 3*time.Second, func() bool {
		rep, _ = fetchReport(t, admin+"/cx/instances", "")
		return rep.Services[0].Instances[0].State == "stale"
	}, "app1 stale in the admin report")
	svc = rep.Services[0]
	if fmt.Sprint(svc.Primary) != "[app2]" || svc.Instances[0].Primary || !svc.Instances[1].Primary {
		t.Errorf("after app1 went stale: %s", mustJSON(svc))
	}
	for _, w := range svc.Warnings {
		if strings.Contains(w, "leader role") {
			t.Errorf("role warning should end with app1 stale: %q", w)
		}
	}

	// POST is refused by the admin route.
	resp, err = client.Post(admin+"/cx/instances", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /cx/instances: %d, want 405", resp.StatusCode)
	}
}

func TestStatusPageBehindBasicAuth(t *testing.T) {
	natsURL := startNATS(t)
	// the snippet of docs/METRICS.md; the hash (bcrypt, cost 4 to keep the
	// test fast) is of "secret".
	base := gateway(t, natsURL, `http://127.0.0.1:{PORT} {
	basic_auth /ha {
		admin $2a$04$6CTjTSP2yAR7qDSseYa7DOjg5kIomkQ41Sukpw5/HcujjU5LBAIJm
	}
	cx_status /ha
	cx_proxy
}`)
	resp, err := client.Get(base + "/ha")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without credentials: %d, want 401", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", base+"/ha", nil)
	req.SetBasicAuth("admin", "secret")
	req.Header.Set("Accept", "application/json")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("with credentials: %d %s, want 200 JSON", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestWantsJSON(t *testing.T) {
	for accept, want := range map[string]bool{
		"":                                     false,
		"*/*":                                  false,
		"application/json":                     true,
		"application/json, text/plain, */*":    true,
		"text/html,application/xhtml+xml,*/*":  false,
		"text/html;q=0.5, application/json":    true,
		"application/json;q=0.1, text/html":    false,
		"application/json;q=0, text/plain":     false,
		"text/html,application/json;q=0.9,*/*": false,
	} {
		r, _ := http.NewRequest("GET", "http://x/ha", nil)
		r.Header.Set("Accept", accept)
		if got := wantsJSON(r); got != want {
			t.Errorf("Accept %q: JSON %v, want %v", accept, got, want)
		}
	}
	r, _ := http.NewRequest("GET", "http://x/ha?format=json", nil)
	if !wantsJSON(r) {
		t.Error("?format=json should get JSON")
	}
}
