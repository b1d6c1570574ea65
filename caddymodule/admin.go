package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminInstances{})
}

// AdminInstances is the admin API module `admin.api.cx`: it serves
// `GET /cx/instances` on Caddy's admin endpoint (default localhost:2019),
// every instance of every running cx service with its state, version,
// uptime, heartbeat age, priority, leader roles, meta, requests in flight
// and whether it is primary. The JSON is the same that cx_status answers
// to `Accept: application/json` (StatusReport). It has no configuration;
// `?limit=N` lists up to N instances per service (default
// DefaultStatusLimit), `?subject_prefix=P` (repeatable) selects services.
type AdminInstances struct{}

// CaddyModule returns the Caddy module information.
func (AdminInstances) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.cx",
		New: func() caddy.Module { return new(AdminInstances) },
	}
}

// Routes returns the /cx/instances route.
func (a AdminInstances) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/cx/instances", Handler: caddy.AdminHandlerFunc(a.handleInstances)},
		// POST /cx/instances/<id>/drain|maintenance|ready (control_admin.go)
		{Pattern: "/cx/instances/", Handler: caddy.AdminHandlerFunc(handleControl)},
		{Pattern: "/cx/gateways", Handler: caddy.AdminHandlerFunc(handleGateways)},
	}
}

// handleInstances reports the services that the loaded config uses. The
// services are found through their usage pool at request time, since admin
// routes are provisioned apart from (and may outlive) the apps.
func (AdminInstances) handleInstances(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("limit %q: want a positive number of instances per service", v)}
		}
		limit = n
	}
	return writeStatusJSON(w, r, statusReport(r.URL.Query()["subject_prefix"], limit))
}

// writeStatusJSON writes rep (a StatusReport, a GatewaysReport), uncached.
func writeStatusJSON(w http.ResponseWriter, r *http.Request, rep any) error {
	body, err := marshalStatus(rep)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Vary", "Accept")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(body)
	return err
}

// marshalStatus encodes rep so that no string grows beyond its size in
// the heartbeat that announced it: no HTML escaping (the report is served
// as application/json with nosniff, and the page fetches it and inserts
// it as text, never as markup), and U+2028/U+2029 left raw (valid JSON;
// encoding/json escapes them for JavaScript source, 3 bytes into 6).
// Without this, a heartbeat of < grew sixfold in every poll.
func marshalStatus(rep any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rep); err != nil {
		return nil, err
	}
	return unescapeLineSeparators(buf.Bytes()), nil
}

// unescapeLineSeparators turns the escapes \u2028 and \u2029 that
// encoding/json writes back into the characters, in place. A backslash
// preceded by an odd number of backslashes is itself escaped text, not
// the start of an escape, and is left alone.
func unescapeLineSeparators(b []byte) []byte {
	const esc = `\u202`
	out := b[:0]
	for i := 0; i < len(b); {
		if b[i] == '\\' && i+6 <= len(b) && string(b[i:i+5]) == esc && (b[i+5] == '8' || b[i+5] == '9') {
			out = append(out, 0xe2, 0x80, 0xa8+(b[i+5]-'8'))
			i += 6
			continue
		}
		if b[i] == '\\' && i+1 < len(b) {
			out = append(out, b[i], b[i+1]) // an escape: skip what it escapes
			i += 2
			continue
		}
		out = append(out, b[i])
		i++
	}
	return out
}

// Interface guard.
var _ caddy.AdminRouter = (*AdminInstances)(nil)
