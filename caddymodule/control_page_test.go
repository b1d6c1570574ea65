package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// pageRequest is a request to the page at /ha from remote, as user when
// set (what basic_auth leaves in the replacer).
func pageRequest(method, remote, user string, form url.Values, header map[string]string) *http.Request {
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	target := "http://gw.example:8080/ha"
	if strings.HasPrefix(remote, "127.") {
		target = "http://127.0.0.1:8080/ha" // a local client asks for this machine
	}
	r := httptest.NewRequest(method, target, body)
	r.RemoteAddr = remote
	if host, ok := header["Host"]; ok {
		r.Host = host
	}
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		r.Header.Set(k, v)
	}
	repl := caddy.NewReplacer()
	if user != "" {
		repl.Set("http.auth.user.id", user)
	}
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
}

var csrfAttr = regexp.MustCompile(`data-csrf="([^"]*)"`)

// pageToken is the token the page renders for the client.
func pageToken(t *testing.T, p *StatusPage, remote, user string) string {
	t.Helper()
	w := httptest.NewRecorder()
	if err := p.ServeHTTP(w, pageRequest("GET", remote, user, nil, nil), nil); err != nil {
		t.Fatal(err)
	}
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "form-action 'self'") || strings.Contains(csp, "script-src *") {
		t.Errorf("CSP %q: want form-action 'self'", csp)
	}
	m := csrfAttr.FindStringSubmatch(w.Body.String())
	if m == nil {
		t.Fatal("no data-csrf on the page")
	}
	return m[1]
}

// TestStatusPageActionsRefuseForgery: an action needs a client the page
// may act for, its own token, and a request from the page's own origin.
func TestStatusPageActionsRefuseForgery(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	s := controlService(t, ns.ClientURL(), "gw-a", heartbeat.DefaultPrefix, true)
	eventually(t, 5*time.Second, s.controlFollowing, "following")
	p := &StatusPage{}
	if err := p.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	const loop, remote = "127.0.0.1:5555", "192.0.2.7:5555"
	local := pageToken(t, p, loop, "")
	if local == "" {
		t.Fatal("a loopback client gets no token")
	}
	if tok := pageToken(t, p, remote, ""); tok != "" {
		t.Fatalf("an unauthenticated remote client got a token %q", tok)
	}
	alice := pageToken(t, p, remote, "alice")
	if alice == "" || alice == local {
		t.Fatalf("alice's token %q (loopback's %q): want her own", alice, local)
	}
	form := func(tok string) url.Values {
		return url.Values{"action": {"maintenance"}, "id": {"app1"}, "service": {heartbeat.DefaultPrefix}, "csrf": {tok}}
	}
	origin := map[string]string{"Origin": "http://127.0.0.1:8080"}
	for _, tc := range []struct {
		name, remote, user string
		form               url.Values
		header             map[string]string
		code               int
		want               string
	}{
		{"no token", loop, "", form(""), origin, 403, "token"},
		{"forged token", loop, "", form(local[:len(local)-2] + "AA"), origin, 403, "token"},
		{"another user's token", remote, "alice", form(local), map[string]string{"Origin": "http://gw.example:8080"}, 403, "token"},
		{"wrong origin", loop, "", form(local), map[string]string{"Origin": "http://evil.example"}, 403, "Origin"},
		{"no origin, cross-site", loop, "", form(local), map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, "Origin"},
		{"remote unauthenticated", remote, "", form(local), origin, 403, "basic_auth"},
		// a proxy on this machine that Caddy does not trust (no
		// trusted_proxies) makes a remote client look local
		{"forwarded through an untrusted local proxy", loop, "", form(local),
			map[string]string{"Origin": "http://127.0.0.1:8080", "X-Forwarded-For": "203.0.113.9"}, 403, "basic_auth"},
		{"Forwarded through an untrusted local proxy", loop, "", form(local),
			map[string]string{"Origin": "http://127.0.0.1:8080", "Forwarded": "for=203.0.113.9"}, 403, "basic_auth"},
		// a forged X-Forwarded-For naming loopback, through a proxy that
		// trusted_proxies lets Caddy believe
		{"forwarded for a forged loopback", loop, "", form(local),
			map[string]string{"Origin": "http://127.0.0.1:8080", "X-Forwarded-For": "::1"}, 403, "basic_auth"},
		// DNS rebinding: a remote site's name resolved to this machine
		{"rebound host name", loop, "", form(local),
			map[string]string{"Host": "evil.example:8080", "Origin": "http://evil.example:8080"}, 403, "basic_auth"},
		{"unknown action", loop, "", url.Values{"action": {"evict"}, "id": {"app1"}, "csrf": {local}}, origin, 404, "drain, maintenance or ready"},
		{"bad id", loop, "", url.Values{"action": {"drain"}, "id": {"../x"}, "csrf": {local}}, origin, 400, "A-Z"},
	} {
		w := httptest.NewRecorder()
		if err := p.ServeHTTP(w, pageRequest("POST", tc.remote, tc.user, tc.form, tc.header), nil); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.want) {
			t.Errorf("%s: %d %s; want %d with %q", tc.name, w.Code, w.Body.String(), tc.code, tc.want)
		}
		if _, held := s.reg.Controls()["app1"]; held {
			t.Fatalf("%s: the refused action was applied", tc.name)
		}
	}

	// the page's own form: 303 back to the page, applied.
	w := httptest.NewRecorder()
	if err := p.ServeHTTP(w, pageRequest("POST", remote, "alice", form(alice), map[string]string{"Sec-Fetch-Site": "same-origin"}), nil); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/ha" {
		t.Fatalf("the page's form: %d to %q, want 303 to /ha", w.Code, w.Header().Get("Location"))
	}
	if c := s.reg.Controls()["app1"]; c.State != membership.ControlMaintenance || c.By != "status page user alice" || c.Gateway != "gw-a" {
		t.Fatalf("app1's control after the form: %+v", c)
	}
	// fetch asking for JSON gets the answer.
	ready := form(local)
	ready.Set("action", "ready")
	w = httptest.NewRecorder()
	if err := p.ServeHTTP(w, pageRequest("POST", loop, "", ready, map[string]string{"Origin": "http://127.0.0.1:8080", "Accept": "application/json"}), nil); err != nil {
		t.Fatal(err)
	}
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"by":"status page (loopback)"`) || len(s.reg.Controls()) != 0 {
		t.Fatalf("ready as JSON: %d %s, controls %v", w.Code, w.Body.String(), s.reg.Controls())
	}
	// the JSON the page polls carries a fresh token for its client.
	w = httptest.NewRecorder()
	if err := p.ServeHTTP(w, pageRequest("GET", loop, "", nil, map[string]string{"Accept": "application/json"}), nil); err != nil {
		t.Fatal(err)
	}
	if w.Header().Get(csrfHeader) != local {
		t.Errorf("the JSON's token %q, want the page's %q", w.Header().Get(csrfHeader), local)
	}

	// actions off: no token, POST refused.
	off := &StatusPage{DisableActions: true}
	_ = off.Provision(caddy.Context{})
	if tok := pageToken(t, off, loop, ""); tok != "" {
		t.Errorf("actions off, yet a token %q", tok)
	}
	err := off.ServeHTTP(httptest.NewRecorder(), pageRequest("POST", loop, "", form(local), origin), nil)
	if err == nil || !strings.Contains(err.Error(), "actions off") {
		t.Errorf("POST with actions off: %v", err)
	}
}
