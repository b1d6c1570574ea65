package caddymodule

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// GatewayStatus is one gateway of a service in a status report, as its
// heartbeats tell; this gateway's own entry (Self) is its local state.
type GatewayStatus struct {
	ID string `json:"id"`
	// Self is true for the gateway that made the report.
	Self bool `json:"self"`
	// State is active, stale (heartbeats stopped) or left.
	State               string    `json:"state"`
	Version             string    `json:"version"`
	StartedAt           time.Time `json:"started_at"`
	UptimeSeconds       float64   `json:"uptime_seconds"`
	HeartbeatAgeSeconds float64   `json:"heartbeat_age_seconds"`
	StaleAfterSeconds   float64   `json:"stale_after_seconds"`
	// NATSServer is the NATS server the gateway is connected to.
	NATSServer string `json:"nats_server"`
	// NATSConnected is, for this gateway, its link's state; for the
	// others, whether their heartbeats arrive (state active).
	NATSConnected bool `json:"nats_connected"`
	// Primary are the instances the gateway sends new requests to (at
	// most heartbeat.MaxGatewayPrimary).
	Primary []string `json:"primary"`
	// InFlight counts the gateway's requests waiting on an instance.
	InFlight int64 `json:"inflight"`
	// Control is true while the gateway follows the control bucket.
	Control bool `json:"control"`
}

// gatewayStatus lists the gateways of the service as of now, by id.
func (s *Service) gatewayStatus(now time.Time) []GatewayStatus {
	f := s.fleetNow()
	if f == nil {
		return []GatewayStatus{}
	}
	out := []GatewayStatus{f.selfStatus(now)}
	for _, g := range f.fleet.Gateways(now) {
		if g.ID == f.self {
			continue // a process claiming this id is a conflict, warned of
		}
		out = append(out, peerStatus(g, now))
	}
	slices.SortFunc(out, func(a, b GatewayStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (f *fleetState) selfStatus(now time.Time) GatewayStatus {
	s := f.svc
	connected := f.nc.IsConnected()
	if s.link != nil {
		connected = s.link.connected()
	}
	age := 0.0
	if last := f.lastBeat.Load(); last != 0 {
		age = max(now.Sub(time.Unix(0, last)).Seconds(), 0)
	}
	return GatewayStatus{
		ID: f.self, Self: true, State: membership.StateActiveName, Version: f.version, StartedAt: f.startedAt,
		UptimeSeconds: max(now.Sub(f.startedAt).Seconds(), 0), HeartbeatAgeSeconds: age,
		StaleAfterSeconds: (membership.StaleFactor * heartbeat.DefaultGatewayPeriod).Seconds(),
		NATSServer:        f.nc.ConnectedServerName(), NATSConnected: connected,
		Primary: capPrimary(s.primaryIDs(now)), InFlight: int64(s.inflight.total()), Control: s.controlFollowing(),
	}
}

func peerStatus(g membership.Gateway, now time.Time) GatewayStatus {
	st := GatewayStatus{
		ID: g.ID, State: g.GatewayState, Version: g.Version, StartedAt: g.StartedAt,
		HeartbeatAgeSeconds: max(now.Sub(g.LastSeen).Seconds(), 0), StaleAfterSeconds: g.StaleAfter.Seconds(),
		NATSServer: g.NATSServer, NATSConnected: g.GatewayState == membership.StateActiveName,
		Primary: slices.Clone(g.Primary), InFlight: g.InFlight, Control: g.Control,
	}
	if st.Primary == nil {
		st.Primary = []string{}
	}
	if g.GatewayState != membership.StateLeftName {
		st.UptimeSeconds = max(now.Sub(g.StartedAt).Seconds(), 0)
	}
	return st
}

// fleetWarnings are the fleet's problems: a split view, mixed versions,
// a gateway id claimed twice.
func (s *Service) fleetWarnings(now time.Time) []string {
	f := s.fleetNow()
	if f == nil {
		return nil
	}
	var out []string
	if since, split := f.splitView(now); split {
		var views []string
		for _, g := range f.fleet.Gateways(now) {
			if g.GatewayState == membership.StateActiveName {
				views = append(views, g.ID+" → "+primaryText(g.Primary))
			}
		}
		out = append(out, clip(fmt.Sprintf("split view: the gateways disagree on the primary for %s (since %s): %s",
			now.Sub(since).Round(100*time.Millisecond), since.UTC().Format(time.RFC3339), strings.Join(views, "; "))))
	}
	if versions := f.fleet.Versions(now); len(versions) > 1 {
		out = append(out, clip("the gateways run different versions: "+f.versionsText(now)))
	}
	f.mu.Lock()
	at, id := f.conflictAt, f.conflictID
	f.mu.Unlock()
	if !at.IsZero() && now.Sub(at) < conflictWarnFor {
		out = append(out, fmt.Sprintf("two gateway processes claim gateway_id %s (last seen %s ago): give each gateway its own gateway_id",
			id, now.Sub(at).Round(time.Second)))
	}
	return out
}

// splitView reports since when the live gateways disagree on the
// primary, when they have for longer than membership.SplitViewAfter.
func (f *fleetState) splitView(now time.Time) (time.Time, bool) {
	since, split := f.fleet.Split(now)
	return since, split && now.Sub(since) > membership.SplitViewAfter
}

func primaryText(ids []string) string {
	if len(ids) == 0 {
		return "none"
	}
	return strings.Join(ids, ", ")
}

// versionsText lists each version the live gateways run with its gateways.
func (f *fleetState) versionsText(now time.Time) string {
	by := map[string][]string{}
	for _, g := range f.fleet.Gateways(now) {
		if g.GatewayState == membership.StateActiveName {
			by[g.Version] = append(by[g.Version], g.ID)
		}
	}
	var parts []string
	for _, v := range slices.Sorted(maps.Keys(by)) {
		name := v
		if name == "" {
			name = "(none)"
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", name, strings.Join(by[v], ", ")))
	}
	return strings.Join(parts, ", ")
}
