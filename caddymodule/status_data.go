package caddymodule

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// StatusReport is the JSON of `GET /cx/instances` on the admin API and of
// cx_status to `Accept: application/json`. The names are a contract
// (DESIGN.md); fields may be added, never renamed.
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
	ServedVersion string           `json:"served_version,omitempty"`
	Instances     []InstanceStatus `json:"instances"`
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
}

// statusReport reports every running service, or only those of prefixes
// when given.
func statusReport(prefixes []string) StatusReport {
	rep := StatusReport{Services: []ServiceStatus{}, GeneratedAt: time.Now().UTC()}
	for _, s := range runningServices() {
		if len(prefixes) > 0 && !slices.Contains(prefixes, s.prefix) {
			continue
		}
		rep.Services = append(rep.Services, s.status(rep.GeneratedAt))
	}
	return rep
}

// runningServices returns one Service per subject prefix, from the usage
// pool: admin routes and handlers are provisioned apart from the cx app,
// and the pool holds exactly the services that a loaded config uses.
// Where several services share a prefix (different settings), the one
// whose events are counted in metrics represents it.
func runningServices() []*Service {
	var all []*Service
	servicePool.Range(func(_, val any) bool {
		if s, ok := val.(*Service); ok && s.reg != nil {
			all = append(all, s)
		}
		return true
	})
	sort.Slice(all, func(i, j int) bool { return all[i].key < all[j].key })
	return representatives(all)
}

func (s *Service) status(now time.Time) ServiceStatus {
	out := ServiceStatus{SubjectPrefix: s.prefix, Primary: []string{}, Warnings: []string{}, Instances: []InstanceStatus{}}
	if s.link != nil {
		out.NATSConnected = s.link.connected()
	}
	primary := s.primaryIDs(now)
	out.Primary = append(out.Primary, primary...)
	active := 0
	for _, m := range s.reg.Members() {
		in := InstanceStatus{
			ID: m.ID, URL: m.URL, State: string(m.State), StateSince: m.Since.UTC(), Version: m.Version,
			StartedAt: m.StartedAt.UTC(), UptimeSeconds: seconds(now.Sub(m.StartedAt)),
			HeartbeatAgeSeconds: seconds(now.Sub(m.LastSeen)), IntervalMS: m.Interval.Milliseconds(),
			StaleAfterSeconds: m.StaleAfter.Seconds(), Priority: m.Priority, AnnouncedPriority: m.AnnouncedPriority,
			LeaderRoles: m.LeaderRoles, Meta: m.Meta,
			RequestsInFlight: s.inflight.count(m.ID),
			Failing:          m.State == membership.StateActive && s.health.failing(m.Dial, now),
			Primary:          slices.Contains(primary, m.ID),
			Held:             m.Held,
		}
		if m.Held && m.HeldUntil.After(now) {
			in.HeldUntil = m.HeldUntil.UTC()
		}
		if in.LeaderRoles == nil {
			in.LeaderRoles = []string{}
		}
		if in.Meta == nil {
			in.Meta = map[string]string{}
		}
		if m.State == membership.StateActive && !m.Held {
			active++
		}
		out.Instances = append(out.Instances, in)
	}
	if active == 0 {
		out.Warnings = append(out.Warnings, "no active instance: requests get 503 Service Unavailable")
	}
	for _, c := range s.reg.RoleConflicts() {
		out.Warnings = append(out.Warnings, fmt.Sprintf("leader role %q is claimed by %d active instances: %v (since %s)",
			c.Role, len(c.IDs), c.IDs, c.Since.UTC().Format(time.RFC3339)))
	}
	if v := s.reg.Snapshot().Version; s.reg.Config().ConsistentVersions {
		out.ServedVersion = v
	}
	if !out.NATSConnected {
		out.Warnings = append(out.Warnings, "the gateway is not connected to NATS: routing continues on the last known instances, none turns stale until it reconnects")
	}
	return out
}

// seconds rounds d to milliseconds, as seconds.
func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}
