package caddymodule

import (
	"fmt"
	"slices"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// StatusReport is the JSON of `GET /cx/instances` on the admin API and of
// cx_status to `Accept: application/json`. The names are a contract
// (README, docs/METRICS.md): fields may be added, never renamed.
type StatusReport struct {
	Services []ServiceStatus `json:"services"`
	// GeneratedAt is the gateway's clock when the report was made.
	GeneratedAt time.Time `json:"generated_at"`
}

// ServiceStatus is one subject prefix.
type ServiceStatus struct {
	SubjectPrefix string `json:"subject_prefix"`
	NATSConnected bool   `json:"nats_connected"`
	// Primary lists the ids of the instances taking new requests now under
	// the failover policy (see InstanceStatus.Primary).
	Primary []string `json:"primary"`
	// Warnings are problems an operator should look at: no active
	// instance, a leader role claimed by two active instances.
	Warnings []string `json:"warnings"`
	// ServedVersion is the one version routed with `versions consistent`.
	ServedVersion string `json:"served_version,omitempty"`
	// Instances lists the known instances, at most the report's limit
	// (default DefaultStatusLimit): the primary ones first, then the
	// others in the registry's order. Unlisted counts the rest.
	Instances []InstanceStatus `json:"instances"`
	// InstanceCount is how many instances are known, listed or not, and
	// StateCounts how many are in each state.
	InstanceCount int            `json:"instance_count"`
	StateCounts   map[string]int `json:"state_counts"`
	Unlisted      int            `json:"unlisted"`
	// Gateways are the gateways serving this prefix, this one included
	// (GatewayStatus.Self), as their heartbeats tell (fleet.go).
	Gateways []GatewayStatus `json:"gateways"`
}

// InstanceStatus is one known instance.
type InstanceStatus struct {
	ID    string `json:"id"`
	URL   string `json:"url"`
	State string `json:"state"`
	// StateSince is when the instance entered its state (gateway's clock).
	StateSince          time.Time         `json:"state_since"`
	Version             string            `json:"version"`
	StartedAt           time.Time         `json:"started_at"`
	UptimeSeconds       float64           `json:"uptime_seconds"`
	HeartbeatAgeSeconds float64           `json:"heartbeat_age_seconds"`
	IntervalMS          int64             `json:"interval_ms"`
	StaleAfterSeconds   float64           `json:"stale_after_seconds"`
	Priority            int               `json:"priority"`
	AnnouncedPriority   int               `json:"announced_priority"`
	LeaderRoles         []string          `json:"leader_roles"`
	Meta                map[string]string `json:"meta"`
	// RequestsInFlight counts the requests sent to the instance through
	// the cx transport that wait for its response headers.
	RequestsInFlight int `json:"requests_in_flight"`
	// Failing is true while passive health passes the instance over after
	// a failed request (fail_timeout).
	Failing bool `json:"failing"`
	// Primary is true for the instance(s) a new request goes to under the
	// failover policy: the active members of the best priority tier not
	// marked failing. Several are primary when they share that priority
	// (they take turns); with `policy round_robin` every active instance
	// takes requests.
	Primary bool `json:"primary"`
	// Held is true for an active instance kept out of routing: it has not
	// had `rise` heartbeats yet, or it is flapping (until HeldUntil).
	Held      bool      `json:"held"`
	HeldUntil time.Time `json:"held_until,omitzero"`
	// Control is the operators' hold on this id (drain or maintenance),
	// set through the admin API or the status page for the whole fleet;
	// absent when none is in force.
	Control *ControlStatus `json:"control,omitempty"`
}

// DefaultStatusLimit is how many instances of one service a status report
// lists at most: what a person can read, and a bound on the report's size
// (about 1.5 KB per instance at most) whatever announces itself.
const DefaultStatusLimit = 1000

// maxStatusWarnings bounds the warnings of one service; one more says how
// many were left out.
const maxStatusWarnings = 20

// statusReport reports every running service, or only those of prefixes
// when given, listing at most limit instances per service (0: default).
func statusReport(prefixes []string, limit int) StatusReport {
	if limit <= 0 {
		limit = DefaultStatusLimit
	}
	rep := StatusReport{Services: []ServiceStatus{}, GeneratedAt: time.Now().UTC()}
	for _, s := range runningServices() {
		if len(prefixes) > 0 && !slices.Contains(prefixes, s.prefix) {
			continue
		}
		rep.Services = append(rep.Services, s.status(rep.GeneratedAt, limit))
	}
	return rep
}

func (s *Service) status(now time.Time, limit int) ServiceStatus {
	out := ServiceStatus{SubjectPrefix: s.prefix, Primary: []string{}, Warnings: []string{}, Instances: []InstanceStatus{},
		StateCounts: map[string]int{}}
	for _, st := range allStates {
		out.StateCounts[string(st)] = 0
	}
	if s.link != nil {
		out.NATSConnected = s.link.connected()
	}
	primaryIDs := s.primaryIDs(now)
	out.Primary = append(out.Primary, primaryIDs[:min(len(primaryIDs), limit)]...)
	primary := make(map[string]bool, len(primaryIDs))
	for _, id := range primaryIDs {
		primary[id] = true
	}
	members := s.reg.Members()
	listed := listedMembers(members, primary, limit)
	active := 0
	for i, m := range members {
		out.StateCounts[string(m.State)]++
		if m.State == membership.StateActive && !m.Held {
			active++
		}
		if listed[i] {
			out.Instances = append(out.Instances, s.instanceStatus(m, now, primary))
		}
	}
	out.InstanceCount = len(members)
	out.Unlisted = len(members) - len(out.Instances)
	if out.Unlisted > 0 {
		out.Warnings = append(out.Warnings, fmt.Sprintf("%d more instances are not listed (at most %d are; see state_counts for all)", out.Unlisted, limit))
	}
	if active == 0 {
		out.Warnings = append(out.Warnings, "no active instance: requests get 503 Service Unavailable")
	}
	conflicts := s.reg.RoleConflicts()
	for i, c := range conflicts {
		if i == maxStatusWarnings {
			out.Warnings = append(out.Warnings, fmt.Sprintf("%d more leader roles are claimed by more than one active instance", len(conflicts)-i))
			break
		}
		ids := c.IDs[:min(len(c.IDs), 10)]
		more := ""
		if len(c.IDs) > len(ids) {
			more = fmt.Sprintf(" and %d more", len(c.IDs)-len(ids))
		}
		out.Warnings = append(out.Warnings, fmt.Sprintf("leader role %q is claimed by %d active instances: %v%s (since %s)",
			c.Role, len(c.IDs), ids, more, jsonSafeTime(c.Since).Format(time.RFC3339)))
	}
	if v := s.reg.Snapshot().Version; s.reg.Config().ConsistentVersions {
		out.ServedVersion = v
	}
	out.Gateways = s.gatewayStatus(now)
	out.Warnings = append(out.Warnings, s.fleetWarnings(now)...)
	if !out.NATSConnected {
		out.Warnings = append(out.Warnings, "the gateway is not connected to NATS: routing continues on the last known instances, none turns stale until it reconnects")
	}
	return out
}

// listedMembers marks the members a report lists: the primary ones, then
// the others in order, limit in all.
func listedMembers(members []membership.Member, primary map[string]bool, limit int) []bool {
	listed := make([]bool, len(members))
	n := 0
	for pass := 0; pass < 2; pass++ {
		for i, m := range members {
			if n == limit {
				return listed
			}
			if !listed[i] && (pass == 1 || primary[m.ID]) {
				listed[i] = true
				n++
			}
		}
	}
	return listed
}

func (s *Service) instanceStatus(m membership.Member, now time.Time, primary map[string]bool) InstanceStatus {
	in := InstanceStatus{
		ID: m.ID, URL: m.URL, State: string(m.State), StateSince: jsonSafeTime(m.Since), Version: m.Version,
		StartedAt: jsonSafeTime(m.StartedAt), UptimeSeconds: seconds(now.Sub(m.StartedAt)),
		HeartbeatAgeSeconds: seconds(now.Sub(m.LastSeen)), IntervalMS: m.Interval.Milliseconds(),
		StaleAfterSeconds: m.StaleAfter.Seconds(), Priority: m.Priority, AnnouncedPriority: m.AnnouncedPriority,
		LeaderRoles: m.LeaderRoles, Meta: m.Meta,
		RequestsInFlight: s.inflight.count(m.ID),
		Failing:          m.State == membership.StateActive && s.health.failing(m.Dial, now),
		Primary:          primary[m.ID],
		Held:             m.Held,
	}
	if m.Held && m.HeldUntil.After(now) {
		in.HeldUntil = jsonSafeTime(m.HeldUntil)
	}
	in.Control = controlStatus(m)
	if in.LeaderRoles == nil {
		in.LeaderRoles = []string{}
	}
	if in.Meta == nil {
		in.Meta = map[string]string{}
	}
	return in
}

// jsonSafeTime is t in UTC, clamped to the years JSON (RFC 3339) can
// hold: a time announced by a publisher must not make the report fail.
func jsonSafeTime(t time.Time) time.Time {
	t = t.UTC()
	if lo := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC); t.Before(lo) {
		return lo
	}
	if hi := time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC); t.After(hi) {
		return hi
	}
	return t
}

// seconds rounds d to milliseconds, as seconds.
func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}
