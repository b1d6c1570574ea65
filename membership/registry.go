package membership

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Registry holds the members of one subject prefix. Heartbeats and sweeps
// change it under a lock; readers of Snapshot never block.
type Registry struct {
	// prefix and onEvent are fixed at New; cfg (the rest) may change under
	// mu (Reconfigure), so code that runs without the lock reads only these.
	prefix   string
	onEvent  func(Event)
	snapshot atomic.Pointer[Snapshot]

	cfg Config // under mu

	mu            sync.Mutex
	fruitlessScan time.Time // last eviction scan that found no victim
	members       map[string]*entry
	frozen        bool
	generation    uint64
	pending       []Event
	// served is the version routed under ConsistentVersions.
	served string
	roles  map[string]*RoleConflict
	// rolesDirty: the message being applied changed someone's roles.
	rolesDirty bool
	// nextDue is the earliest deadline of any member: Sweep scans only
	// from then on.
	nextDue time.Time
	// coalesced rebuilds (Config.RebuildEvery)
	lastRebuild     time.Time
	lastRebuildCost time.Duration
	rebuildPending  bool
	pendingTimer    *time.Timer
	// closed: the registry was abandoned (Close); it reports nothing more.
	closed atomic.Bool
	// controls are the operators' holds by instance id (control.go);
	// controlsLoaded is set once they were first read (AwaitControls).
	controls       map[string]Control
	controlsLoaded bool
}

// entry is a member plus what the registry needs to judge later messages.
type entry struct {
	Member
	// previous process of this id, for telling a restart's stragglers from
	// a second live process claiming the same id.
	prevStartedAt time.Time
	prevSeq       int64
	// thawedAt is when the registry last thawed while this member was
	// live: staleness is judged from the later of it and LastSeen, so that
	// LastSeen keeps meaning the last accepted heartbeat.
	thawedAt time.Time
	// rate limits the messages of the known process (and of newer ones);
	// stray those of any other process claiming the id, which must not
	// spend the known one's budget.
	rate, stray bucket
	// clampedFor is the started_at of the process whose clamped priority
	// was last reported (once per process).
	clampedFor time.Time
	damping
	confirmation
	lastPayload
}

// New returns an empty registry.
func New(cfg Config) (*Registry, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	r := &Registry{prefix: cfg.Prefix, onEvent: cfg.OnEvent, cfg: cfg, members: make(map[string]*entry)}
	r.snapshot.Store(&Snapshot{})
	return r, nil
}

// Config returns the registry's configuration with defaults applied.
func (r *Registry) Config() Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

// Snapshot returns the current routing view. It never blocks.
func (r *Registry) Snapshot() *Snapshot { return r.snapshot.Load() }

// Observe decodes a message received on subject and applies it.
func (r *Registry) Observe(subject string, data []byte, now time.Time) error {
	if m := r.recognise(subject, data); m != nil {
		r.Apply(m, now)
		return nil
	}
	m, err := heartbeat.Decode(r.prefix, subject, data)
	if err != nil {
		reason := "invalid"
		if e, ok := err.(*heartbeat.Error); ok {
			reason = e.Field
		}
		id, _ := heartbeat.IDFromSubject(r.prefix, subject)
		r.emit(Event{Kind: EventRejected, ID: sanitizeID(id), Reason: reason, Detail: err.Error()})
		return err
	}
	r.Apply(m, now)
	r.remember(m, data)
	return nil
}

// Apply applies a valid heartbeat received at now.
func (r *Registry) Apply(m *heartbeat.Message, now time.Time) {
	r.mu.Lock()
	r.rolesDirty = false
	changed := r.apply(m, now)
	if e := r.members[m.ID]; e != nil {
		r.pullDue(e, now)
		r.noteClamp(e)
	}
	switch {
	case changed:
		r.rebuild()
	case r.rolesDirty:
		r.checkRoles(r.sorted())
	}
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
}

func (r *Registry) apply(m *heartbeat.Message, now time.Time) (routingChanged bool) {
	if reason, detail := r.cfg.refuse(m, now); reason != "" {
		r.queue(Event{Kind: EventRejected, ID: m.ID, URL: m.URL, Reason: reason, Detail: detail})
		return false
	}
	e, known := r.members[m.ID]
	if !known {
		return r.admit(m, now)
	}
	// Only a message of the known process, or of a newer one, is charged
	// to the id's rate budget: anything else has a budget of its own, so
	// that messages claiming other processes cannot starve the real one.
	switch kind := r.attribute(e, m, now); kind {
	case msgKnown, msgRestart:
		if !e.rate.take(now, ratePerSecond(m.Interval())) {
			r.queue(Event{Kind: EventRejected, ID: m.ID, URL: m.URL, Reason: "rate",
				Detail: "more heartbeats than the rate limit allows for this instance"})
			return false
		}
		if kind == msgRestart {
			return r.restart(e, m, now)
		}
		return r.update(e, m, now)
	default:
		if !e.stray.take(now, RateFloor) {
			r.queue(Event{Kind: EventRejected, ID: m.ID, URL: m.URL, Reason: "rate",
				Detail: "more messages than the rate limit allows for processes of this id that are not the known process " +
					"(an older started_at, a conflicting url or seq, a replay); the known process is not affected"})
			return false
		}
		switch kind {
		case msgOlder:
			r.fromOlderProcess(e, m)
		case msgConflict:
			r.sameProcessConflict(e, m)
		}
		return false
	}
}

// What a message of a known id is, once attributed to a process.
type msgKind int

const (
	msgKnown    msgKind = iota // the next heartbeat of the known process
	msgRestart                 // a newer process of the id
	msgOlder                   // a process started before the known one
	msgConflict                // claims the known process, but cannot be it
	msgStale                   // a duplicate, reordered or after-leaving message; a newer process's leaving
)

func (r *Registry) attribute(e *entry, m *heartbeat.Message, now time.Time) msgKind {
	switch {
	case m.StartedAt.Before(e.StartedAt):
		return msgOlder
	case m.StartedAt.After(e.StartedAt):
		if m.State == heartbeat.StateLeaving {
			// leaving is accepted only from the known process: a leaving
			// of any other started_at (forged, or a newer process whose
			// ready messages were missed) changes nothing.
			return msgStale
		}
		return msgRestart
	case !sameEndpoint(m.URL, e.URL):
		// The url of a process cannot change: a second publisher claims it.
		return msgConflict
	case m.Seq <= e.Seq || e.State == StateLeft:
		return msgStale
	case !plausibleSeq(e.Seq, m.Seq, now.Sub(e.LastSeen)):
		return msgConflict
	}
	return msgKnown
}

// sameProcessConflict reports a message that claims the known process
// (same started_at) but cannot be it: another url, or a seq further
// ahead than the process could have counted. It changes nothing.
func (r *Registry) sameProcessConflict(e *entry, m *heartbeat.Message) {
	why := "the url of a process cannot change"
	if m.URL == e.URL {
		why = fmt.Sprintf("seq %d is implausibly far ahead of %d", m.Seq, e.Seq)
	}
	r.queue(Event{Kind: EventConflict, ID: m.ID, URL: m.URL,
		Detail: "two publishers claim the process started at " + e.StartedAt.Format(time.RFC3339Nano) + " (" + why +
			"): url " + e.URL + " is kept, the message for url " + m.URL + " is ignored"})
}

func (r *Registry) admit(m *heartbeat.Message, now time.Time) bool {
	if m.State == heartbeat.StateLeaving {
		return false
	}
	if len(r.members) >= r.cfg.MaxInstances && !r.evictOne(now) {
		r.queue(Event{Kind: EventRejected, ID: m.ID, URL: m.URL, Reason: "capacity",
			Detail: "the registry already holds max_instances members"})
		return false
	}
	e := &entry{}
	e.Control = r.controls[m.ID]
	r.fill(e, m, now)
	r.members[m.ID] = e
	r.queue(Event{Kind: EventJoin, ID: m.ID, URL: m.URL})
	return e.routable()
}

// evictOne drops the longest-stale or longest-left member to make room.
func (r *Registry) evictOne(now time.Time) bool {
	if now.Sub(r.fruitlessScan) < evictScanEvery {
		return false
	}
	var victim *entry
	for _, e := range r.members {
		if e.State != StateStale && e.State != StateLeft {
			continue
		}
		if victim == nil || e.Since.Before(victim.Since) {
			victim = e
		}
	}
	if victim == nil {
		r.fruitlessScan = now
		return false
	}
	delete(r.members, victim.ID)
	r.queue(Event{Kind: EventForget, ID: victim.ID, URL: victim.URL})
	return true
}

func (r *Registry) fromOlderProcess(e *entry, m *heartbeat.Message) {
	if m.State == heartbeat.StateLeaving {
		return
	}
	if !m.StartedAt.Equal(e.prevStartedAt) {
		// The first message seen from this older process (the gateway may
		// have met the newer one first): remember it; a further message
		// from it proves a second live process.
		if m.StartedAt.After(e.prevStartedAt) {
			e.prevStartedAt, e.prevSeq = m.StartedAt, m.Seq
		}
		return
	}
	if m.Seq <= e.prevSeq {
		return
	}
	e.prevSeq = m.Seq
	r.queue(Event{Kind: EventConflict, ID: m.ID, URL: m.URL,
		Detail: "two live processes claim this id; the one started at " + e.StartedAt.Format(time.RFC3339Nano) +
			" wins over the one started at " + m.StartedAt.Format(time.RFC3339Nano)})
}

func (r *Registry) restart(e *entry, m *heartbeat.Message, now time.Time) bool {
	e.prevStartedAt, e.prevSeq = e.StartedAt, e.Seq
	before := e.route()
	if e.State == StateActive {
		r.noteExit(e, now) // the previous process ended without leaving
	}
	// A new process is cold, whatever the previous one was: slow start and
	// failback_delay apply to it afresh.
	e.streak, e.wasRouted = 0, false
	r.fill(e, m, now)
	r.queue(Event{Kind: EventRestart, ID: m.ID, URL: m.URL})
	return e.route() != before
}

func (r *Registry) update(e *entry, m *heartbeat.Message, now time.Time) bool {
	before := e.route()
	wasState := e.State
	r.fill(e, m, now)
	if e.State != wasState {
		r.queue(Event{Kind: transitionKind(e.State), ID: e.ID, URL: e.URL})
	}
	return e.route() != before
}

func transitionKind(s State) EventKind {
	switch s {
	case StateLeft:
		return EventLeave
	case StateDraining:
		return EventDraining
	default:
		return EventReady
	}
}

// route is what decides routing and ordering; a change in it rebuilds the
// snapshot. It is the zero value for a member that is not routed, so that
// changes to such a member rebuild nothing.
type routeKey struct {
	Route
	routable bool
	// startedAt in UTC: time.Time values of one instant compare equal with
	// == only in the same *Location, and time.Parse makes a new one for
	// every offset that is not whole hours (e.g. +05:30).
	startedAt time.Time
}

func (e *entry) route() routeKey {
	if !e.routable() {
		return routeKey{}
	}
	return routeKey{
		Route:     Route{ID: e.ID, Dial: e.Dial, Priority: e.Priority, Version: e.Version},
		routable:  true,
		startedAt: e.StartedAt.UTC(),
	}
}

func (r *Registry) fill(e *entry, m *heartbeat.Message, now time.Time) {
	state := stateOf(m.State)
	if state != e.State {
		e.Since = now
		if e.State == StateActive {
			r.noteExit(e, now)
		}
	}
	if state == StateActive {
		e.streak++
	} else {
		e.streak = 0
	}
	e.ID, e.URL, e.Dial, e.State = m.ID, m.URL, heartbeat.HostPort(m.URL), state
	e.Version, e.StartedAt, e.Seq, e.Interval = m.Version, m.StartedAt, m.Seq, m.Interval()
	e.AnnouncedPriority, e.Priority = m.Priority, r.priority(m)
	if !slices.Equal(e.LeaderRoles, m.LeaderRoles) {
		r.rolesDirty = true
	}
	e.LeaderRoles, e.Meta = slices.Clone(m.LeaderRoles), maps.Clone(m.Meta)
	e.LastSeen = now
	e.StaleAfter = r.cfg.staleAfter(e.Interval)
	r.settle(e, now)
}

// rebuild publishes a new snapshot, or schedules it when RebuildEvery
// coalesces rebuilds; the lock must be held.
func (r *Registry) rebuild() {
	if r.cfg.RebuildEvery <= 0 {
		r.rebuildNow()
		return
	}
	if r.rebuildPending {
		return
	}
	wait := min(r.cfg.RebuildEvery, 10*r.lastRebuildCost) - time.Since(r.lastRebuild)
	if wait <= 0 {
		r.rebuildNow()
		return
	}
	r.rebuildPending = true
	r.pendingTimer = time.AfterFunc(wait, r.pendingRebuild)
}

func (r *Registry) pendingRebuild() {
	r.mu.Lock()
	r.rebuildPending = false
	r.rebuildNow()
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
}

func (r *Registry) rebuildNow() {
	r.generation++
	r.lastRebuild = time.Now()
	defer func() { r.lastRebuildCost = time.Since(r.lastRebuild) }()
	if r.cfg.AwaitControls && !r.controlsLoaded {
		// routing waits until the operators' holds are known
		r.snapshot.Store(&Snapshot{Generation: r.generation})
		return
	}
	sorted := r.sorted()
	var version *string
	if r.cfg.ConsistentVersions {
		r.chooseVersion(sorted)
		version = &r.served
	}
	r.snapshot.Store(buildSnapshot(sorted, r.generation, version))
	r.checkRoles(sorted)
}

func (r *Registry) sorted() []*Member {
	out := make([]*Member, 0, len(r.members))
	for _, e := range r.members {
		out = append(out, &e.Member)
	}
	slices.SortFunc(out, func(a, b *Member) int {
		switch {
		case less(a, b):
			return -1
		case less(b, a):
			return 1
		}
		return 0
	})
	return out
}

// Members returns a copy of every known member, ordered as routed.
func (r *Registry) Members() []Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	sorted := r.sorted()
	out := make([]Member, len(sorted))
	for i, m := range sorted {
		out[i] = *m
		out[i].LeaderRoles = slices.Clone(m.LeaderRoles)
		out[i].Meta = maps.Clone(m.Meta)
	}
	return out
}

// Close abandons the registry: a pending rebuild is stopped, and no event
// is reported any more (a heartbeat or probe still under way finishes
// silently). Snapshot keeps answering.
func (r *Registry) Close() {
	r.closed.Store(true)
	r.mu.Lock()
	if r.pendingTimer != nil {
		r.pendingTimer.Stop()
	}
	r.mu.Unlock()
}

// Frozen reports whether staleness is suspended (NATS is disconnected).
func (r *Registry) Frozen() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.frozen
}

func (r *Registry) queue(ev Event) { r.pending = append(r.pending, ev) }

func (r *Registry) takeEvents() []Event {
	ev := r.pending
	r.pending = nil
	return ev
}

func (r *Registry) report(events []Event) {
	for _, ev := range events {
		r.emit(ev)
	}
}

func (r *Registry) emit(ev Event) {
	if r.onEvent != nil && !r.closed.Load() {
		r.onEvent(ev)
	}
}

// sanitizeID keeps ids from untrusted subjects usable in logs and labels.
func sanitizeID(id string) string {
	if heartbeat.ValidID(id) {
		return id
	}
	return ""
}
