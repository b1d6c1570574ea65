package caddymodule

import (
	"fmt"
	"os"
	"strings"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// setGatewayID checks gateway_id, or derives it from the host name.
func (a *App) setGatewayID() error {
	if a.GatewayID == "" {
		host, _ := os.Hostname()
		a.GatewayID = idFromHostname(host)
		return nil
	}
	if !heartbeat.ValidID(a.GatewayID) {
		return fmt.Errorf("cx: gateway_id %q: use 1 to %d characters of A-Z a-z 0-9 _ -", a.GatewayID, heartbeat.MaxIDLen)
	}
	return nil
}

// idFromHostname makes a valid id of a host name: its first label (the
// rest is the same for a fleet in one domain), other characters as -.
func idFromHostname(host string) string {
	host, _, _ = strings.Cut(host, ".")
	id := strings.Map(func(r rune) rune {
		if r < 0x80 && heartbeat.ValidID(string(r)) {
			return r
		}
		return '-'
	}, host)
	if len(id) > heartbeat.MaxIDLen {
		id = id[:heartbeat.MaxIDLen]
	}
	if id == "" {
		return "gateway"
	}
	return id
}

// gatewayID is the id of the gateway whose config the service runs with.
func (s *Service) gatewayID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.applied == nil || s.applied.owner == nil {
		return "gateway"
	}
	return s.applied.owner.GatewayID
}
