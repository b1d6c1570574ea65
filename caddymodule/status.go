package caddymodule

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

func init() {
	caddy.RegisterModule(StatusPage{})
}

// The page's assets, embedded so that the page is self-contained: no CDN,
// no second request.
var (
	//go:embed static/status.html
	statusHTML string
	//go:embed static/status.css
	statusCSS string
	//go:embed static/status.js
	statusJS string

	statusTemplate = template.Must(template.New("status").Parse(statusHTML))
)

// DefaultStatusRefresh is how often the status page polls for fresh data.
const DefaultStatusRefresh = time.Second

// StatusPage is the `cx_status` handler: a live HTML page of the
// instances of the running cx services (state, whether it is the one a
// request goes to now, version, uptime, heartbeat age, priority, leader
// roles, requests in flight, meta), readable on a phone. The page polls
// its own URL with `Accept: application/json` and redraws in place; that
// JSON, the same as the admin API's `GET /cx/instances`, is what any
// client asking for application/json (or `?format=json`) gets. It answers
// every request it sees: scope it with a path matcher (`cx_status /ha`)
// and protect it with `basic_auth` where the instance URLs are not public.
type StatusPage struct {
	// SubjectPrefixes limits the page to these services. Default: all.
	SubjectPrefixes []string `json:"subject_prefixes,omitempty"`

	// Title is the page's heading. Default: "HA Instances".
	Title string `json:"title,omitempty"`

	// Refresh is how often the page polls for fresh data. Default: 1s.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// Limit is how many instances of each service are listed at most;
	// the report counts the others by state. Default: 1000.
	Limit int `json:"limit,omitempty"`

	// Public silences the warning logged at start when the page is served
	// on a listener beyond loopback with no authentication handler (such
	// as basic_auth) before it. Set it when the page is protected some
	// other way (a firewall, forward_auth, a proxy in front) or is meant
	// to be public.
	Public bool `json:"public,omitempty"`

	// DisableActions removes the page's Drain, Maintenance and Ready
	// buttons and refuses their POSTs (`actions off`). Actions are offered
	// to an authenticated user (basic_auth, forward_auth before the page)
	// or a client on this machine asking for localhost (not one a proxy
	// forwarded), never to anyone else.
	DisableActions bool `json:"disable_actions,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (StatusPage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.cx_status",
		New: func() caddy.Module { return new(StatusPage) },
	}
}

// Provision checks the configuration and sets defaults.
func (p *StatusPage) Provision(caddy.Context) error {
	for _, prefix := range p.SubjectPrefixes {
		if err := heartbeat.ValidPrefix(prefix); err != nil {
			return fmt.Errorf("cx_status: subject_prefix %q: %v", prefix, err)
		}
	}
	if p.Refresh < 0 {
		return fmt.Errorf("cx_status: refresh must be a positive duration like 1s")
	}
	if p.Limit < 0 {
		return fmt.Errorf("cx_status: limit must be a positive number of instances")
	}
	if p.Refresh == 0 {
		p.Refresh = caddy.Duration(DefaultStatusRefresh)
	}
	if p.Title == "" {
		p.Title = "HA Instances"
	}
	return nil
}

// ServeHTTP answers the page, or its JSON to clients asking for JSON.
func (p *StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method == http.MethodPost && !p.DisableActions {
		return p.serveAction(w, r)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		allow, what := "GET, HEAD, POST", "GET, HEAD and POST (actions)"
		if p.DisableActions {
			allow, what = "GET, HEAD", "GET and HEAD only (actions off)"
		}
		w.Header().Set("Allow", allow)
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("cx_status answers %s", what))
	}
	token := p.actionsFor(r)
	if wantsJSON(r) {
		if token != "" {
			w.Header().Set(csrfHeader, token)
		}
		if err := writeStatusJSON(w, r, statusReport(p.SubjectPrefixes, p.Limit)); err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, err)
		}
		return nil
	}
	var buf bytes.Buffer
	err := statusTemplate.Execute(&buf, struct {
		Title     string
		RefreshMS int64
		CSS       template.CSS
		JS        template.JS
		CSRF      string
	}{p.Title, time.Duration(p.Refresh).Milliseconds(), template.CSS(statusCSS), template.JS(statusJS), token})
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Add("Vary", "Accept")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	if r.Method == http.MethodHead {
		return nil
	}
	_, _ = w.Write(buf.Bytes())
	return nil
}

// wantsJSON reports whether the client prefers application/json to HTML:
// `?format=json`, or an Accept header that ranks JSON above text/html.
func wantsJSON(r *http.Request) bool {
	if r.URL.Query().Get("format") == "json" {
		return true
	}
	var jsonQ, htmlQ float64 = -1, -1
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		media, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if v, ok := params["q"]; ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				q = f
			}
		}
		switch media {
		case "application/json":
			jsonQ = max(jsonQ, q)
		case "text/html":
			htmlQ = max(htmlQ, q)
		}
	}
	return jsonQ > 0 && jsonQ > htmlQ
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*StatusPage)(nil)
	_ caddyhttp.MiddlewareHandler = (*StatusPage)(nil)
)
