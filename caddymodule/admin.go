package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"

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
// to `Accept: application/json` (StatusReport). It has no configuration.
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
	return []caddy.AdminRoute{{Pattern: "/cx/instances", Handler: caddy.AdminHandlerFunc(a.handleInstances)}}
}

// handleInstances reports the services that the loaded config uses. The
// services are found through their usage pool at request time, since admin
// routes are provisioned apart from (and may outlive) the apps.
func (AdminInstances) handleInstances(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	return writeStatusJSON(w, r, statusReport(r.URL.Query()["subject_prefix"]))
}

// writeStatusJSON writes rep, uncached.
func writeStatusJSON(w http.ResponseWriter, r *http.Request, rep StatusReport) error {
	body, err := json.Marshal(rep)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Add("Vary", "Accept")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(append(body, '\n'))
	return err
}

// Interface guard.
var _ caddy.AdminRouter = (*AdminInstances)(nil)
