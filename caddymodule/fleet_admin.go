package caddymodule

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// GatewaysReport is the JSON of `GET /cx/gateways` on the admin API: per
// service, the gateways of its fleet and the fleet's problems.
type GatewaysReport struct {
	Services []FleetStatus `json:"services"`
	// GeneratedAt is this gateway's clock when the report was made.
	GeneratedAt time.Time `json:"generated_at"`
	// GatewayID is the id of the gateway that made the report.
	GatewayID string `json:"gateway_id"`
}

// FleetStatus is the fleet of one subject prefix.
type FleetStatus struct {
	SubjectPrefix string          `json:"subject_prefix"`
	Gateways      []GatewayStatus `json:"gateways"`
	// SplitView is true while the live gateways have disagreed on the
	// primary for longer than 2s, since SplitSince.
	SplitView  bool      `json:"split_view"`
	SplitSince time.Time `json:"split_since,omitzero"`
	// Versions are the distinct versions the live gateways run.
	Versions []string `json:"versions"`
	Warnings []string `json:"warnings"`
}

// handleGateways serves GET /cx/gateways.
func handleGateways(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	// as GET /cx/instances: no HTML escaping of what peers announce
	return writeStatusJSON(w, r, gatewaysReport(time.Now().UTC()))
}

// gatewaysReport reports the fleet of every running service.
func gatewaysReport(now time.Time) GatewaysReport {
	rep := GatewaysReport{Services: []FleetStatus{}, GeneratedAt: now}
	for _, s := range runningServices() {
		if rep.GatewayID == "" {
			rep.GatewayID = s.gatewayID()
		}
		rep.Services = append(rep.Services, s.fleetStatus(now))
	}
	return rep
}

func (s *Service) fleetStatus(now time.Time) FleetStatus {
	out := FleetStatus{SubjectPrefix: s.prefix, Gateways: s.gatewayStatus(now), Versions: []string{}, Warnings: []string{}}
	out.Warnings = append(out.Warnings, s.fleetWarnings(now)...)
	if f := s.fleetNow(); f != nil {
		out.SplitSince, out.SplitView = f.splitView(now)
		if !out.SplitView {
			out.SplitSince = time.Time{}
		}
		if v := f.fleet.Versions(now); v != nil {
			out.Versions = v
		}
	}
	return out
}
