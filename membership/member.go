// Package membership is the gateway side of the heartbeat protocol: a
// registry of the instances that announced themselves, their states and
// staleness, and a watcher that feeds it from NATS. It does not import
// Caddy; the request path reads an immutable Snapshot without locks.
package membership

import (
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// State is the gateway's view of an instance.
type State string

// The states a member can be in. Only StateActive is routed.
const (
	StateActive   State = "active"
	StateDraining State = "draining"
	StateStale    State = "stale"
	StateLeft     State = "left"
)

// Member is what the registry knows of one instance. Values handed out by
// the registry are copies; changing them changes nothing.
type Member struct {
	ID        string
	URL       string
	Dial      string // host:port of URL
	State     State
	Version   string
	StartedAt time.Time
	Seq       int64
	Interval  time.Duration
	// Priority is the effective priority: the configured override, else the
	// announced one.
	Priority          int
	AnnouncedPriority int
	LeaderRoles       []string
	Meta              map[string]string
	// LastSeen is the gateway's clock at the last accepted heartbeat.
	LastSeen time.Time
	// Since is when the member entered its current state.
	Since time.Time
	// StaleAfter is the silence after which this member turns stale.
	StaleAfter time.Duration
	// Held is true for an active member kept out of routing: it has not
	// risen yet (Config.Rise) or it is flapping (HeldUntil).
	Held      bool
	HeldUntil time.Time
	// ActiveSince is when the member was last put into routing.
	ActiveSince time.Time
	// Control is the operators' entry for this id, if any (control.go).
	Control Control
}

// less orders members by priority, then started_at, then id.
func less(a, b *Member) bool {
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	if !a.StartedAt.Equal(b.StartedAt) {
		return a.StartedAt.Before(b.StartedAt)
	}
	return a.ID < b.ID
}

func stateOf(s heartbeat.State) State {
	switch s {
	case heartbeat.StateDraining:
		return StateDraining
	case heartbeat.StateLeaving:
		return StateLeft
	default:
		return StateActive
	}
}

// routable reports whether requests may be sent to m.
func (m *Member) routable() bool { return m.State == StateActive && !m.Held && !m.Control.Holds(m) }
