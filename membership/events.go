package membership

// EventKind names a change in membership. The first six are the values of
// the caddy_cx_membership_events_total metric's event label.
type EventKind string

// Kinds of events the registry reports.
const (
	EventJoin     EventKind = "join"     // a new instance (or one forgotten before) announced itself
	EventLeave    EventKind = "leave"    // an instance announced leaving
	EventStale    EventKind = "stale"    // an instance's heartbeats stopped
	EventRestart  EventKind = "restart"  // a known id came back with a later started_at
	EventRejected EventKind = "rejected" // a message was refused; Reason says why
	EventConflict EventKind = "conflict" // two live processes claim one id
	EventDraining EventKind = "draining" // an instance stopped taking new requests
	EventReady    EventKind = "ready"    // a draining or stale instance is routed again
	EventForget   EventKind = "forget"   // a stale or left instance was dropped from the list

	EventFlapping      EventKind = "flapping"       // an instance left active too often and is held out
	EventVersionSwitch EventKind = "version_switch" // consistent versions: the routed version changed
	EventRoleConflict  EventKind = "role_conflict"  // two active instances claim one leader role
	EventRoleResolved  EventKind = "role_resolved"  // a leader role conflict ended
	EventAliveUnheard  EventKind = "alive_unheard"  // heartbeats stopped but the url still answers
	// EventPriorityClamped: a process announced a priority outside
	// Config.PriorityRange and is routed with the nearest end of it;
	// reported once per process.
	EventPriorityClamped EventKind = "priority_clamped"
)

// Event is one change, reported to Config.OnEvent after the registry's
// lock is released.
type Event struct {
	Kind EventKind
	ID   string
	URL  string
	// Reason is set for rejections, and for members a Reconfigure drops:
	// the offending field or rule, from a small fixed set (safe as a
	// metric label).
	Reason string
	// Detail is a human-readable explanation for logs.
	Detail string
	// Count is how many messages a rejection stands for: messages dropped
	// before they could be decoded are reported in batches. 0 means 1.
	Count int
}

// Messages is how many messages the event stands for.
func (ev Event) Messages() int { return max(ev.Count, 1) }
