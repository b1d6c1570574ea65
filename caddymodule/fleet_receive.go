package caddymodule

import (
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// fleetKind and fleetResult index the counters of
// caddy_cx_fleet_messages_total.
type (
	fleetKind   int
	fleetResult int
)

const (
	fleetHeartbeat fleetKind = iota
	fleetObservation
)

const (
	fleetAccepted fleetResult = iota
	fleetRejected
	fleetIgnored
)

var (
	fleetKindNames   = [...]string{"heartbeat", "observation"}
	fleetResultNames = [...]string{"accepted", "rejected", "ignored"}
)

// fleetCounters are the fleet's counters of a service.
type fleetCounters struct {
	messages [len(fleetKindNames)][len(fleetResultNames)]atomic.Uint64
	applied  atomic.Uint64
}

func (st *serviceStats) fleetMessage(k fleetKind, r fleetResult) *atomic.Uint64 {
	return &st.fleet.messages[k][r]
}

// conflictWarnFor is how long a gateway id conflict stays among the
// fleet's warnings after it was last heard.
const conflictWarnFor = time.Minute

// onGatewayMsg handles a message on PREFIX.gw.*: a heartbeat of a gateway
// (this one's included).
func (f *fleetState) onGatewayMsg(msg *nats.Msg) {
	now := time.Now()
	m, err := f.fleet.ObserveGateway(msg.Subject, msg.Data, now)
	st := f.svc.stats
	switch {
	case err == nil && m != nil:
		st.fleetMessage(fleetHeartbeat, fleetAccepted).Add(1)
	case err == nil || errorIsNoise(err):
		// an older seq, or a leaving of a gateway never heard: harmless
		st.fleetMessage(fleetHeartbeat, fleetIgnored).Add(1)
		return
	default:
		st.fleetMessage(fleetHeartbeat, fleetRejected).Add(1)
		return
	}
	if m.ID == f.self || m.State != heartbeat.GatewayStateActive {
		return
	}
	f.svc.controlCatchUp(m.ControlRevision)
	if !samePrimary(m.Primary, capPrimary(f.svc.primaryIDs(now))) {
		// judge staleness now, as the peer does: both then route alike
		f.svc.reg.Sweep(now)
	}
}

// errorIsNoise tells the refusals that say nothing is wrong (a duplicate,
// a reordered message, a straggler of an older process) from invalid or
// refused heartbeats, which carry a reason.
func errorIsNoise(err error) bool { return errors.Is(err, membership.ErrGatewayIgnored) }

func samePrimary(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// onObservationMsg handles a message on PREFIX.obs.*: the failures a
// gateway saw, applied here when that gateway is announced and the
// failed process is the one this gateway routes to.
func (f *fleetState) onObservationMsg(msg *nats.Msg) {
	now := time.Now()
	o, err := f.fleet.ObserveFailures(msg.Subject, msg.Data, now)
	st := f.svc.stats
	switch {
	case err != nil:
		var decode *heartbeat.Error
		if errors.As(err, &decode) {
			st.fleetMessage(fleetObservation, fleetRejected).Add(1)
		} else {
			st.fleetMessage(fleetObservation, fleetIgnored).Add(1)
		}
		return
	case o == nil:
		return // this gateway's own
	case !f.svc.sharesFailures():
		st.fleetMessage(fleetObservation, fleetIgnored).Add(1)
		return
	}
	st.fleetMessage(fleetObservation, fleetAccepted).Add(1)
	if f.svc.applyObservation(o, now) > 0 {
		f.wake()
	}
}

// applyObservation marks failing, for this gateway's fail_timeout, the
// instances of o whose process is the one this gateway knows.
func (s *Service) applyObservation(o *heartbeat.Observation, now time.Time) (applied int) {
	for _, failed := range o.Failed {
		m, ok := s.reg.Member(failed.ID)
		if !ok || m.State != membership.StateActive || !m.StartedAt.Equal(failed.StartedAt) {
			continue
		}
		s.health.mark(m.Dial, now)
		s.stats.fleet.applied.Add(1)
		applied++
	}
	return applied
}

// sharesFailures reports whether the service shares failures with its
// fleet (share_failures).
func (s *Service) sharesFailures() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied == nil || !s.applied.settings.shareFailuresOff
}

// onEvent logs and remembers changes in the fleet and refusals.
func (f *fleetState) onEvent(ev membership.FleetEvent) {
	switch ev.Kind {
	case membership.FleetJoin, membership.FleetRestart:
		if ev.Gateway != f.self {
			// a new peer learns of this gateway now, not in a second:
			// until then it would ignore this gateway's observations
			f.wantBeat.Store(true)
		}
	case membership.FleetConflict:
		f.mu.Lock()
		f.conflictAt, f.conflictID = time.Now(), ev.Gateway
		f.mu.Unlock()
	}
	f.svc.logFleetEvent(ev)
}

// fleetRefusals are the log messages of refused fleet messages.
var fleetRefusals = map[membership.FleetEventKind]string{
	membership.FleetRejected: "gateway heartbeat rejected",
	membership.FleetConflict: "gateway id conflict",
	membership.FleetIgnored:  "gateway observation ignored",
}

// logFleetEvent logs ev through the service's rate limits: changes at
// info, refusals as rate-limited warnings (publishers make them).
func (s *Service) logFleetEvent(ev membership.FleetEvent) {
	l := s.log
	fields := []zap.Field{zap.String("event", string(ev.Kind)), zap.String("gateway", clip(ev.Gateway))}
	switch ev.Kind {
	case membership.FleetJoin, membership.FleetLeave, membership.FleetRestart:
		if n, ok := l.lifecycle.due("gateway:"+string(ev.Kind), l.now()); ok {
			l.logger.Info("gateway fleet", append(fields, notLogged(n)...)...)
		}
	default:
		msg := fleetRefusals[ev.Kind]
		if msg == "" {
			msg = "gateway fleet: " + string(ev.Kind)
		}
		if n, ok := l.due("fleet:" + string(ev.Kind) + ":" + ev.Reason); ok {
			l.logger.Warn(msg, append(fields, zap.String("reason", ev.Reason),
				zap.String("detail", clip(ev.Detail)), zap.Int("similar_not_logged", n))...)
		}
	}
}
