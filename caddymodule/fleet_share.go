package caddymodule

import (
	"time"

	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Failures this gateway counts are shared in coalesced observations: the
// first at once, later ones at the end of a window of observationWindow
// after the last one published, at most heartbeat.MaxObservedFailures per
// message (the rest wait for the next window).
const observationWindow = 100 * time.Millisecond

// maxPendingFailures bounds the addresses, and the processes, waiting to
// be published: far more than one gateway routes to within a window.
const maxPendingFailures = 1024

// queueFailure is passive health's hook: dial failed a request here. It
// runs on the request path, so it only queues and wakes the publisher.
func (f *fleetState) queueFailure(dial string) {
	f.mu.Lock()
	if _, ok := f.failedSet[dial]; !ok && len(f.failed) < maxPendingFailures {
		f.failedSet[dial] = struct{}{}
		f.failed = append(f.failed, dial)
	}
	f.mu.Unlock()
	f.wake()
}

// wake asks run to publish what is queued and look at the primary.
func (f *fleetState) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// flushLater names the processes that failed at once (an instance that
// restarts within the window must not be reported as its new process),
// then publishes them if the window allows it now, else arms window for
// the end of it. It runs on run's goroutine.
func (f *fleetState) flushLater(window *time.Timer, now time.Time) {
	f.resolve()
	if len(f.ready) == 0 {
		return
	}
	if wait := observationWindow - now.Sub(f.lastObs); !f.lastObs.IsZero() && wait > 0 {
		window.Reset(wait)
		return
	}
	f.flush(now)
	if len(f.ready) > 0 {
		window.Reset(observationWindow)
	}
}

// resolve moves the dials that failed to the processes routed at them
// (several ids may share an address). An address no longer routed is
// dropped: its instance is gone or out of routing already.
func (f *fleetState) resolve() {
	f.mu.Lock()
	dials := f.failed
	f.failed, f.failedSet = nil, map[string]struct{}{}
	f.mu.Unlock()
	if len(dials) == 0 {
		return
	}
	want := make(map[string]bool, len(dials))
	for _, d := range dials {
		want[d] = true
	}
	for _, r := range f.svc.reg.Snapshot().Routes {
		if !want[r.Dial] || len(f.ready) >= maxPendingFailures {
			continue
		}
		m, ok := f.svc.reg.Member(r.ID)
		if !ok {
			continue
		}
		failed := heartbeat.ObservedFailure{ID: r.ID, StartedAt: m.StartedAt}
		if _, dup := f.readySet[failed]; !dup {
			f.readySet[failed] = struct{}{}
			f.ready = append(f.ready, failed)
		}
	}
}

// flush publishes one observation of at most MaxObservedFailures of the
// failures ready; with share_failures off they are dropped.
func (f *fleetState) flush(now time.Time) {
	n := min(len(f.ready), heartbeat.MaxObservedFailures)
	batch := f.ready[:n:n]
	f.ready = append([]heartbeat.ObservedFailure(nil), f.ready[n:]...)
	for _, failed := range batch {
		delete(f.readySet, failed)
	}
	if !f.svc.sharesFailures() {
		f.ready, f.readySet = nil, map[heartbeat.ObservedFailure]struct{}{}
		return
	}
	o := heartbeat.Observation{Proto: heartbeat.Proto, Kind: heartbeat.KindObservation, Gateway: f.self,
		StartedAt: f.startedAt, Seq: f.obsSeq.Add(1), Failed: batch}
	data, err := heartbeat.EncodeGateway(&o)
	if err != nil {
		return
	}
	f.lastObs = now
	if err := f.nc.Publish(heartbeat.ObservationSubject(f.svc.prefix, f.self), data); err != nil {
		if n, ok := f.svc.log.due("fleet:publish"); ok {
			f.svc.log.logger.Warn("publishing observed failures", zap.Error(err), zap.Int("similar_not_logged", n))
		}
	}
}
