package membership

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Fleet is what one gateway knows of the gateways sharing a subject
// prefix with it (itself included): their heartbeats on PREFIX.gw.ID, by
// the rules instances' heartbeats follow (size, strict decoding, clock,
// seq, rate, staleness after StaleFactor intervals), and whether an
// observation on PREFIX.obs.ID comes from one of them.
type Fleet struct {
	cfg FleetConfig

	mu       sync.Mutex
	gateways map[string]*gatewayEntry
	// splitSince is when the live gateways began to disagree on the
	// primary; zero while they agree.
	splitSince time.Time
	// frozenAt is set while this gateway is cut off from NATS: silence
	// then proves nothing, and staleness is judged as of that moment.
	frozenAt time.Time
	closed   atomic.Bool
}

// FleetConfig configures a Fleet.
type FleetConfig struct {
	// Prefix is the subject prefix of the service.
	Prefix string
	// Self is this gateway's id: its own observations are already applied.
	Self string
	// SelfStartedAt, if set, is this gateway process's started_at: a
	// heartbeat on Self's id with any other is refused as a conflict
	// (reason "self"), so that no one else speaks for this gateway in
	// its own view of the fleet (its primary, its state).
	SelfStartedAt time.Time
	// ClockSkew is how far ahead a started_at may be. Default 1m.
	ClockSkew time.Duration
	// MaxGateways bounds the gateways kept. Default DefaultMaxGateways.
	MaxGateways int
	// OnEvent, if set, is told of changes and refusals, outside the lock.
	OnEvent func(FleetEvent)
}

// DefaultMaxGateways bounds a fleet: more gateways than this on one
// prefix is a flood, not a fleet.
const DefaultMaxGateways = 64

// Observation rate per gateway: a gateway coalesces its failures into at
// most one message every 100 ms.
const (
	ObservationBurst = 20
	ObservationRate  = 20.0
)

// SplitViewAfter is how long gateways may disagree on the primary before
// the disagreement is reported as a split view.
const SplitViewAfter = 2 * time.Second

// FleetEventKind names a change in the fleet or a refused message.
type FleetEventKind string

// Kinds of fleet events.
const (
	FleetJoin     FleetEventKind = "join"
	FleetLeave    FleetEventKind = "leave"
	FleetRestart  FleetEventKind = "restart"
	FleetRejected FleetEventKind = "rejected" // a gateway heartbeat was refused; Reason says why
	FleetConflict FleetEventKind = "conflict" // two live processes claim one gateway id
	// FleetIgnored: an observation was refused (Reason: invalid field,
	// "unannounced", "rate").
	FleetIgnored FleetEventKind = "ignored"
)

// FleetEvent is one change or refusal.
type FleetEvent struct {
	Kind    FleetEventKind
	Gateway string
	// Reason is a small fixed set of values, safe as a metric label.
	Reason string
	Detail string
}

// Gateway is what the fleet knows of one gateway. State is "active",
// "stale" or "left".
type Gateway struct {
	heartbeat.GatewayMessage
	Self         bool
	GatewayState string
	LastSeen     time.Time
	Since        time.Time
	StaleAfter   time.Duration
}

type gatewayEntry struct {
	Gateway
	// rate budgets the heartbeats of the known process and of newer ones;
	// observations those of the known process.
	rate, observations bucket
	// obsSeq is the seq of the last observation accepted from the known
	// process: replays and reordered ones are refused.
	obsSeq int64
	// thawedAt is when this gateway's NATS connection came back while the
	// entry was live (Thaw): staleness counts from then.
	thawedAt time.Time
	// prevStartedAt and prevSeq are the previous process of this id, so
	// that a straggler of a restart is told from a second live process.
	prevStartedAt time.Time
	prevSeq       int64
}

// ErrUnannounced is returned for an observation from a publisher that is
// not a live, announced gateway process.
var ErrUnannounced = errors.New("observation from a gateway that is not announced")

// ErrObservationRate is returned for an observation beyond its
// gateway's budget (ObservationBurst, then ObservationRate per second).
var ErrObservationRate = errors.New("observations beyond the gateway's rate")

// ErrObservationSeq is returned for an observation whose seq is not above
// the last one accepted from its gateway process: a replay or a reordered
// message.
var ErrObservationSeq = errors.New("observation seq not above the last accepted from its gateway")

// ErrGatewayIgnored is returned, with no event, for a gateway heartbeat
// that changes nothing and proves nothing: a duplicate or reordered one,
// the leaving of a process that is not the known one, or the first
// straggler of a process older than the known one.
var ErrGatewayIgnored = errors.New("gateway heartbeat ignored: duplicate, reordered, or not from the known process")

// NewFleet returns an empty fleet.
func NewFleet(cfg FleetConfig) *Fleet {
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.MaxGateways <= 0 {
		cfg.MaxGateways = DefaultMaxGateways
	}
	return &Fleet{cfg: cfg, gateways: make(map[string]*gatewayEntry)}
}

// Prefix is the fleet's subject prefix.
func (f *Fleet) Prefix() string { return f.cfg.Prefix }

// ObserveGateway decodes a gateway heartbeat received on subject and
// applies it; the message is returned when it was accepted.
func (f *Fleet) ObserveGateway(subject string, data []byte, now time.Time) (*heartbeat.GatewayMessage, error) {
	m, err := heartbeat.DecodeGateway(f.cfg.Prefix, subject, data)
	if err != nil {
		id, _ := heartbeat.GatewayIDFromSubject(f.cfg.Prefix, subject)
		f.emit(FleetEvent{Kind: FleetRejected, Gateway: id, Reason: reasonOf(err), Detail: err.Error()})
		return nil, err
	}
	f.mu.Lock()
	ev, accepted := f.apply(m, now)
	f.updateSplit(now)
	f.mu.Unlock()
	if ev.Kind != "" {
		f.emit(ev)
	}
	switch {
	case accepted:
		return m, nil
	case ev.Kind == "":
		return nil, ErrGatewayIgnored
	}
	return nil, &FleetError{Event: ev}
}

// FleetError is a gateway heartbeat refused with an event (rejected or
// conflict); Event is the one reported.
type FleetError struct{ Event FleetEvent }

func (e *FleetError) Error() string {
	if e.Event.Detail != "" {
		return e.Event.Detail
	}
	return "gateway heartbeat " + string(e.Event.Kind) + ": " + e.Event.Reason
}

func reasonOf(err error) string {
	if e, ok := err.(*heartbeat.Error); ok {
		return e.Field
	}
	return "invalid"
}

// apply records m; the lock is held. A refusal with an event returns
// that event; a silent one the zero event.
func (f *Fleet) apply(m *heartbeat.GatewayMessage, now time.Time) (FleetEvent, bool) {
	if reason, detail := refuseClock(m.StartedAt, now, f.cfg.ClockSkew); reason != "" {
		return FleetEvent{Kind: FleetRejected, Gateway: m.ID, Reason: reason, Detail: detail}, false
	}
	if m.ID == f.cfg.Self && !f.cfg.SelfStartedAt.IsZero() && !m.StartedAt.Equal(f.cfg.SelfStartedAt) {
		return FleetEvent{Kind: FleetConflict, Gateway: m.ID, Reason: "self",
			Detail: "a heartbeat for this gateway's own id " + m.ID + " from a process started at " + m.StartedAt.Format(time.RFC3339Nano) +
				", not this one: another gateway uses the same gateway_id; give each gateway its own"}, false
	}
	e := f.gateways[m.ID]
	if e == nil {
		return f.admit(m, now)
	}
	switch {
	case m.StartedAt.Before(e.StartedAt):
		return f.fromOlderProcess(e, m), false
	case m.StartedAt.After(e.StartedAt):
		if m.State == heartbeat.GatewayStateLeaving {
			// leaving counts only from the known process: a forged one,
			// or a newer process's whose heartbeats were missed, changes
			// nothing.
			return FleetEvent{}, false
		}
		if !e.rate.take(now, ratePerSecond(m.Interval())) {
			return rateEvent(m.ID), false
		}
		e.prevStartedAt, e.prevSeq = e.StartedAt, e.Seq
		f.fill(e, m, now)
		return FleetEvent{Kind: FleetRestart, Gateway: m.ID}, true
	case m.Seq <= e.Seq || e.GatewayState == StateLeftName:
		return FleetEvent{}, false
	case !plausibleSeq(e.Seq, m.Seq, now.Sub(e.LastSeen)):
		return FleetEvent{Kind: FleetConflict, Gateway: m.ID, Reason: "seq",
			Detail: fmt.Sprintf("gateway %s: seq %d is implausibly far ahead of %d: two gateway processes claim this id and started_at; give each gateway its own gateway_id",
				m.ID, m.Seq, e.Seq)}, false
	case !e.rate.take(now, ratePerSecond(m.Interval())):
		return rateEvent(m.ID), false
	}
	was := e.GatewayState
	f.fill(e, m, now)
	if e.GatewayState == StateLeftName && was != StateLeftName {
		return FleetEvent{Kind: FleetLeave, Gateway: m.ID}, true
	}
	return FleetEvent{}, true
}

func rateEvent(id string) FleetEvent {
	return FleetEvent{Kind: FleetRejected, Gateway: id, Reason: "rate",
		Detail: "gateway " + id + ": more heartbeats than the rate limit allows"}
}

// admit records the first heartbeat of an id, if there is room.
func (f *Fleet) admit(m *heartbeat.GatewayMessage, now time.Time) (FleetEvent, bool) {
	if m.State == heartbeat.GatewayStateLeaving {
		return FleetEvent{}, false
	}
	if len(f.gateways) >= f.cfg.MaxGateways && !f.evict(now) {
		return FleetEvent{Kind: FleetRejected, Gateway: m.ID, Reason: "capacity",
			Detail: fmt.Sprintf("gateway %s: the fleet already holds %d live gateways, the most it keeps", m.ID, f.cfg.MaxGateways)}, false
	}
	e := &gatewayEntry{}
	f.gateways[m.ID] = e
	f.fill(e, m, now)
	return FleetEvent{Kind: FleetJoin, Gateway: m.ID}, true
}

// fromOlderProcess judges a heartbeat of a process started before the
// known one, which never changes the known one (not even its LastSeen).
// The first one seen is a restart's straggler; further ones prove a second
// live process claiming the id.
func (f *Fleet) fromOlderProcess(e *gatewayEntry, m *heartbeat.GatewayMessage) FleetEvent {
	if m.State == heartbeat.GatewayStateLeaving {
		return FleetEvent{}
	}
	if !m.StartedAt.Equal(e.prevStartedAt) {
		if m.StartedAt.After(e.prevStartedAt) {
			e.prevStartedAt, e.prevSeq = m.StartedAt, m.Seq
		}
		return FleetEvent{}
	}
	if m.Seq <= e.prevSeq {
		return FleetEvent{}
	}
	e.prevSeq = m.Seq
	return FleetEvent{Kind: FleetConflict, Gateway: m.ID, Reason: "process",
		Detail: "two live gateway processes claim id " + m.ID + " (started at " + e.StartedAt.Format(time.RFC3339Nano) +
			" and " + m.StartedAt.Format(time.RFC3339Nano) + "); give each gateway its own gateway_id"}
}

// StateLeftName and the other gateway states as reported.
const (
	StateActiveName = "active"
	StateStaleName  = "stale"
	StateLeftName   = "left"
)

func (f *Fleet) fill(e *gatewayEntry, m *heartbeat.GatewayMessage, now time.Time) {
	state := StateActiveName
	if m.State == heartbeat.GatewayStateLeaving {
		state = StateLeftName
	}
	if state != e.GatewayState || !m.StartedAt.Equal(e.StartedAt) {
		e.Since = now
	}
	if !m.StartedAt.Equal(e.StartedAt) {
		e.obsSeq = 0 // observation seqs count per process
	}
	e.GatewayMessage = *m
	e.GatewayMessage.Primary = slices.Clone(m.Primary)
	e.GatewayState = state
	e.Self = m.ID == f.cfg.Self
	e.LastSeen = now
	e.StaleAfter = StaleFactor * m.Interval()
}

// evict drops the gateway silent longest, if it is stale or left.
func (f *Fleet) evict(now time.Time) bool {
	var victim *gatewayEntry
	for _, e := range f.gateways {
		if f.live(e, now) {
			continue
		}
		if victim == nil || e.LastSeen.Before(victim.LastSeen) {
			victim = e
		}
	}
	if victim == nil {
		return false
	}
	delete(f.gateways, victim.ID)
	return true
}

// live reports whether e is active and heard within its stale_after, as
// of now (or of the freeze, while frozen); the lock is held.
func (f *Fleet) live(e *gatewayEntry, now time.Time) bool {
	if !f.frozenAt.IsZero() {
		now = f.frozenAt
	}
	return e.GatewayState == StateActiveName && now.Sub(e.heardFrom()) <= e.StaleAfter
}

// heardFrom is when staleness is counted from: the last heartbeat, or the
// return of this gateway's NATS connection if that came later.
func (e *gatewayEntry) heardFrom() time.Time {
	if e.thawedAt.After(e.LastSeen) {
		return e.thawedAt
	}
	return e.LastSeen
}

// Freeze suspends staleness while this gateway is cut off from NATS: the
// other gateways' silence then says nothing about them.
func (f *Fleet) Freeze(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozenAt.IsZero() {
		f.frozenAt = now
	}
}

// Thaw resumes staleness after a reconnect: every gateway live when the
// connection was lost gets a fresh stale_after to be heard again.
func (f *Fleet) Thaw(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozenAt.IsZero() {
		return
	}
	for _, e := range f.gateways {
		if f.live(e, f.frozenAt) {
			e.thawedAt = now
		}
	}
	f.frozenAt = time.Time{}
}

// Gateways returns every known gateway, ordered by id, with its state as
// of now.
func (f *Fleet) Gateways(now time.Time) []Gateway {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Gateway, 0, len(f.gateways))
	for _, e := range f.gateways {
		g := e.Gateway
		g.Primary = slices.Clone(e.Primary)
		if g.GatewayState == StateActiveName && !f.live(e, now) {
			g.GatewayState = StateStaleName
			g.Since = e.heardFrom().Add(e.StaleAfter)
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b Gateway) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// ObserveFailures decodes an observation received on subject and returns
// it if it comes from a live, announced gateway other than this one, and
// within that gateway's budget. An observation of this gateway's own
// returns nil and no error.
func (f *Fleet) ObserveFailures(subject string, data []byte, now time.Time) (*heartbeat.Observation, error) {
	o, err := heartbeat.DecodeObservation(f.cfg.Prefix, subject, data)
	if err != nil {
		id, _ := heartbeat.ObservationIDFromSubject(f.cfg.Prefix, subject)
		f.emit(FleetEvent{Kind: FleetIgnored, Gateway: id, Reason: reasonOf(err), Detail: err.Error()})
		return nil, err
	}
	if o.Gateway == f.cfg.Self && (f.cfg.SelfStartedAt.IsZero() || o.StartedAt.Equal(f.cfg.SelfStartedAt)) {
		return nil, nil
	}
	f.mu.Lock()
	err = f.admitObservation(o, now)
	f.mu.Unlock()
	if err != nil {
		reason := "unannounced"
		switch err {
		case ErrObservationRate:
			reason = "rate"
		case ErrObservationSeq:
			reason = "seq"
		}
		f.emit(FleetEvent{Kind: FleetIgnored, Gateway: o.Gateway, Reason: reason, Detail: err.Error()})
		return nil, err
	}
	return o, nil
}

func (f *Fleet) admitObservation(o *heartbeat.Observation, now time.Time) error {
	if o.Gateway == f.cfg.Self {
		return ErrUnannounced // another process speaking for this gateway
	}
	e := f.gateways[o.Gateway]
	if e == nil || !f.live(e, now) || !e.StartedAt.Equal(o.StartedAt) {
		return ErrUnannounced
	}
	if o.Seq <= e.obsSeq {
		return ErrObservationSeq
	}
	if !e.observations.takeBurst(now, ObservationRate, ObservationBurst) {
		return ErrObservationRate
	}
	e.obsSeq = o.Seq
	return nil
}

// Split reports since when the live gateways name different primaries,
// if they do now.
func (f *Fleet) Split(now time.Time) (since time.Time, split bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updateSplit(now)
	return f.splitSince, !f.splitSince.IsZero()
}

// updateSplit tracks disagreement; the lock is held.
func (f *Fleet) updateSplit(now time.Time) {
	first, agree, n := "", true, 0
	for _, e := range f.gateways {
		if !f.live(e, now) {
			continue
		}
		key := strings.Join(sortedCopy(e.Primary), ",")
		if n == 0 {
			first = key
		} else if key != first {
			agree = false
		}
		n++
	}
	switch {
	case agree:
		f.splitSince = time.Time{}
	case f.splitSince.IsZero():
		f.splitSince = now
	}
}

func sortedCopy(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}

// Versions returns the distinct versions the live gateways run, sorted.
func (f *Fleet) Versions(now time.Time) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.gateways {
		if f.live(e, now) && !slices.Contains(out, e.Version) {
			out = append(out, e.Version)
		}
	}
	slices.Sort(out)
	return out
}

// Close stops reporting events.
func (f *Fleet) Close() { f.closed.Store(true) }

func (f *Fleet) emit(ev FleetEvent) {
	if f.cfg.OnEvent != nil && !f.closed.Load() {
		ev.Gateway = sanitizeID(ev.Gateway)
		f.cfg.OnEvent(ev)
	}
}
