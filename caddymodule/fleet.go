package caddymodule

import (
	"time"

	"github.com/nats-io/nats.go"
)

// fleetState is what a service shares with the other gateways of its
// prefix: its heartbeats on PREFIX.gw.ID, the failures it observed on
// PREFIX.obs.ID, and what it hears of theirs.
type fleetState struct{}

// startFleet starts announcing the gateway and sharing failures on nc.
func (s *Service) startFleet(nc *nats.Conn) {}

// stopFleet announces the gateway leaving and stops.
func (s *Service) stopFleet() {}

// GatewayStatus is one gateway of a service in a status report.
type GatewayStatus struct {
	ID string `json:"id"`
}

// gatewayStatus lists the gateways of the service as of now.
func (s *Service) gatewayStatus(now time.Time) []GatewayStatus { return []GatewayStatus{} }

// fleetWarnings are the fleet's problems: a split view, mixed versions.
func (s *Service) fleetWarnings(now time.Time) []string { return nil }
