package caddymodule

import (
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// Timing of the gateway heartbeat besides its period: the primary is
// looked at every primaryCheckEvery (a snapshot pointer and a counter
// compared; the primary itself is derived only when one moved, or every
// primaryRecheckEvery for marks that expired), and a changed primary is
// announced at once, but not more often than every beatSpacing, which
// keeps a flapping primary within the rate the fleet accepts (membership
// allows 10 gateway heartbeats a second after a burst of 20; the
// periodic heartbeat is skipped within half a period of another one).
const (
	primaryCheckEvery   = 25 * time.Millisecond
	primaryRecheckEvery = 250 * time.Millisecond
	beatSpacing         = 120 * time.Millisecond
)

// Pending limits of the fleet subscriptions: a fleet is at most
// membership.DefaultMaxGateways gateways sending about one message a
// second each, so a backlog beyond these is a flood, dropped by NATS and
// counted (reportDropped) at a bounded memory cost.
const (
	fleetPendingMsgs  = 1024
	fleetPendingBytes = 4 << 20
)

// fleetState is what a service shares with the other gateways of its
// prefix: its heartbeats on PREFIX.gw.ID, the failures it observed on
// PREFIX.obs.ID, and what it hears of theirs.
type fleetState struct {
	svc       *Service
	nc        *nats.Conn
	fleet     *membership.Fleet
	self      string
	startedAt time.Time
	version   string

	gwSub, obsSub *nats.Subscription
	// dropped are the subscriptions' slow-consumer drops last reported
	// (run goroutine only).
	gwDropped, obsDropped int

	seq, obsSeq atomic.Int64
	// lastBeat is when the last heartbeat was published (unix nanos).
	lastBeat atomic.Int64
	// wantBeat asks run for a heartbeat soon (a peer joined).
	wantBeat atomic.Bool
	// changeBeat is when run last published a heartbeat for a change
	// (run goroutine only).
	changeBeat time.Time

	kick chan struct{}
	// status tells run of the connection's losses and returns.
	status chan nats.Status
	done   chan struct{}
	wg     sync.WaitGroup

	mu sync.Mutex
	// failed are the dials that failed a request here since run last
	// looked (failedSet mirrors it).
	failed    []string
	failedSet map[string]struct{}
	// ready are the failed processes waiting for the next observation,
	// in order (readySet mirrors it), and lastObs when the last
	// observation went out; run's goroutine only.
	ready    []heartbeat.ObservedFailure
	readySet map[heartbeat.ObservedFailure]struct{}
	lastObs  time.Time
	// conflictAt and conflictID are the last gateway id conflict heard.
	conflictAt time.Time
	conflictID string
	// published is the primary of the last heartbeat.
	published []string
}

// gatewayVersion is the caddy-cx version gateways announce: the module's
// version from the build, "dev" for a build from a checkout.
var gatewayVersion = sync.OnceValue(func() string {
	const module = "github.com/caddy-cx/caddy-cx"
	version := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Path == module {
			version = bi.Main.Version
		}
		for _, dep := range bi.Deps {
			if dep.Path == module {
				version = dep.Version
			}
		}
	}
	if version == "" || version == "(devel)" {
		return "dev"
	}
	return truncateRunes(version, heartbeat.MaxVersionLen)
})

func truncateRunes(s string, n int) string {
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

// startFleet starts announcing the gateway and sharing failures on nc.
// It runs with s.mu held (Service.start).
func (s *Service) startFleet(nc *nats.Conn) {
	if s.fleet != nil || nc == nil {
		return
	}
	self := "gateway"
	if s.applied != nil && s.applied.owner != nil && s.applied.owner.GatewayID != "" {
		self = s.applied.owner.GatewayID
	}
	f := &fleetState{svc: s, nc: nc, self: self, startedAt: time.Now().UTC().Round(0), version: gatewayVersion(),
		kick: make(chan struct{}, 1), done: make(chan struct{}),
		failedSet: map[string]struct{}{}, readySet: map[heartbeat.ObservedFailure]struct{}{}}
	f.fleet = membership.NewFleet(membership.FleetConfig{Prefix: s.prefix, Self: self, SelfStartedAt: f.startedAt, OnEvent: f.onEvent})
	var err error
	if f.gwSub, err = nc.Subscribe(heartbeat.GatewayWildcard(s.prefix), f.onGatewayMsg); err == nil {
		f.obsSub, err = nc.Subscribe(heartbeat.ObservationWildcard(s.prefix), f.onObservationMsg)
	}
	if err != nil {
		s.log.logger.Warn("subscribing to the gateway fleet: other gateways will not be heard", zap.Error(err))
		f.unsubscribe()
		return
	}
	_ = f.gwSub.SetPendingLimits(fleetPendingMsgs, fleetPendingBytes)
	_ = f.obsSub.SetPendingLimits(fleetPendingMsgs, fleetPendingBytes)
	// cut off from NATS, this gateway hears no one: staleness waits
	f.status = nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING)
	if nc.IsConnected() {
		_ = nc.FlushTimeout(time.Second)
	} else {
		f.fleet.Freeze(time.Now())
	}
	s.fleet = f
	hook := f.queueFailure
	s.health.onFail.Store(&hook)
	f.beat(time.Now(), heartbeat.GatewayStateActive)
	f.wg.Add(1)
	go f.run()
}

// stopFleet announces the gateway leaving and stops.
func (s *Service) stopFleet() {
	s.mu.Lock()
	f := s.fleet
	s.fleet = nil
	s.mu.Unlock()
	if f == nil {
		return
	}
	s.health.onFail.Store(nil)
	close(f.done)
	f.wg.Wait()
	f.nc.RemoveStatusListener(f.status)
	f.unsubscribe()
	f.fleet.Close()
	f.beat(time.Now(), heartbeat.GatewayStateLeaving)
	if f.nc.IsConnected() {
		_ = f.nc.FlushTimeout(500 * time.Millisecond)
	}
}

// fleetNow is the service's fleet, nil before start and after stop.
func (s *Service) fleetNow() *fleetState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fleet
}

func (f *fleetState) unsubscribe() {
	for _, sub := range []*nats.Subscription{f.gwSub, f.obsSub} {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
	}
}

// run publishes the heartbeat every period and when the primary changes,
// and the failures queued, until stopFleet.
func (f *fleetState) run() {
	defer f.wg.Done()
	period := time.NewTicker(heartbeat.DefaultGatewayPeriod)
	defer period.Stop()
	check := time.NewTicker(primaryCheckEvery)
	defer check.Stop()
	window := time.NewTimer(time.Hour)
	window.Stop()
	defer window.Stop()
	var seenSnap *membership.Snapshot
	var seenHealth uint64
	var derived time.Time
	// checkPrimary derives the primary only when what it depends on moved
	// (or marks may have expired), and announces a change.
	checkPrimary := func(now time.Time) {
		snap, gen := f.svc.reg.Snapshot(), f.svc.health.generation()
		if snap == seenSnap && gen == seenHealth && now.Sub(derived) < primaryRecheckEvery && !f.wantBeat.Load() {
			return
		}
		if f.beatIfChanged(now) {
			seenSnap, seenHealth, derived = snap, gen, now
		}
	}
	for {
		select {
		case <-f.done:
			return
		case now := <-period.C:
			if f.renamed() {
				return
			}
			f.reportDropped()
			if time.Duration(now.UnixNano()-f.lastBeat.Load()) >= heartbeat.DefaultGatewayPeriod/2 {
				f.beat(now, heartbeat.GatewayStateActive)
			}
		case now := <-check.C:
			checkPrimary(now)
		case <-f.kick:
			// a failure counted or applied: the primary may have moved
			now := time.Now()
			f.flushLater(window, now)
			checkPrimary(now)
		case now := <-window.C:
			f.flushLater(window, now)
		case st := <-f.status:
			f.followConnection(st)
		}
	}
}

// announceSoon asks for a gateway heartbeat now rather than at the next
// period (a control write: peers learn its revision).
func (s *Service) announceSoon() {
	f := s.fleetNow()
	if f == nil {
		return
	}
	f.wantBeat.Store(true)
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// followConnection freezes the fleet's staleness while the connection is
// lost and thaws it when it returns.
func (f *fleetState) followConnection(st nats.Status) {
	if st == nats.CONNECTED {
		f.fleet.Thaw(time.Now())
		return
	}
	f.fleet.Freeze(time.Now())
}

// renamed starts the fleet anew, off run's goroutine, when a reload gave
// the gateway another gateway_id: the old id says it leaves, the new one
// joins with a new started_at.
func (f *fleetState) renamed() bool {
	s := f.svc
	id := s.gatewayID()
	if id == f.self {
		return false
	}
	s.log.logger.Info("gateway_id changed by a reload: leaving the fleet as the old id, joining as the new one",
		zap.String("old", f.self), zap.String("new", id))
	go func() {
		s.stopFleet()
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.watcher != nil { // not destructed meanwhile
			s.startFleet(f.nc)
		}
	}()
	return true
}

// beatIfChanged publishes a heartbeat when the primary differs from the
// last one published or a peer asked for one, at most every beatSpacing;
// it reports false when too early to look.
func (f *fleetState) beatIfChanged(now time.Time) bool {
	if now.Sub(f.changeBeat) < beatSpacing {
		return false // a later check looks
	}
	primary := capPrimary(f.svc.primaryIDs(now))
	f.mu.Lock()
	changed := !slices.Equal(primary, f.published)
	f.mu.Unlock()
	if changed || f.wantBeat.Swap(false) {
		f.changeBeat = now
		f.beatWith(now, heartbeat.GatewayStateActive, primary)
	}
	return true
}

func capPrimary(ids []string) []string {
	if len(ids) > heartbeat.MaxGatewayPrimary {
		ids = ids[:heartbeat.MaxGatewayPrimary]
	}
	return slices.Clone(ids)
}

// beat publishes one heartbeat of the gateway in state.
func (f *fleetState) beat(now time.Time, state string) {
	f.beatWith(now, state, capPrimary(f.svc.primaryIDs(now)))
}

func (f *fleetState) beatWith(now time.Time, state string, primary []string) {
	msg := heartbeat.GatewayMessage{
		Proto: heartbeat.Proto, Kind: heartbeat.KindGateway, ID: f.self, State: state,
		StartedAt: f.startedAt, Seq: f.seq.Add(1), IntervalMS: int(heartbeat.DefaultGatewayPeriod / time.Millisecond),
		Version: f.version, NATSServer: truncateRunes(f.nc.ConnectedServerName(), heartbeat.MaxNATSServerLen),
		Primary: primary, InFlight: min(int64(f.svc.inflight.total()), heartbeat.MaxGatewayInFlight),
		Control: f.svc.controlFollowing(), ControlRevision: f.svc.controlRevision(),
	}
	data, err := heartbeat.EncodeGateway(&msg)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.published = primary
	f.mu.Unlock()
	f.lastBeat.Store(now.UnixNano())
	if err := f.nc.Publish(heartbeat.GatewaySubject(f.svc.prefix, f.self), data); err != nil {
		if n, ok := f.svc.log.due("fleet:publish"); ok {
			f.svc.log.logger.Warn("publishing the gateway heartbeat", zap.Error(err), zap.Int("similar_not_logged", n))
		}
	}
}

// total is the number of tries waiting on any instance.
func (f *inflight) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, w := range f.waiting {
		for ; w != nil; w = w.next {
			n++
		}
	}
	return n
}

// reportDropped counts the messages NATS dropped unread on the fleet
// subscriptions since the last look, as rejected.
func (f *fleetState) reportDropped() {
	st := f.svc.stats
	for i, sub := range []*nats.Subscription{f.gwSub, f.obsSub} {
		n, err := sub.Dropped()
		last := []*int{&f.gwDropped, &f.obsDropped}[i]
		if err != nil || n <= *last {
			continue
		}
		d := n - *last
		*last = n
		if st != nil {
			st.fleetMessage(fleetKind(i), fleetRejected).Add(uint64(d))
		}
		if held, ok := f.svc.log.due("fleet:dropped"); ok {
			f.svc.log.logger.Warn("gateway fleet messages dropped unread: they arrived faster than the gateway could process them (NATS slow consumer)",
				zap.Int("dropped", d), zap.Int("similar_not_logged", held))
		}
	}
}
