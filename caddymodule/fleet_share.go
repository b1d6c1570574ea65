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

// maxPendingFailures bounds the addresses waiting to be published: far
// more than one gateway can route to within a window.
const maxPendingFailures = 1024

// queueFailure is passive health's hook: dial failed a request here. It
// runs on the request path, so it only queues and wakes the publisher.
func (f *fleetState) queueFailure(dial string) {
	f.mu.Lock()
	if _, ok := f.pendingSet[dial]; !ok && len(f.pending) < maxPendingFailures {
		f.pendingSet[dial] = struct{}{}
		f.pending = append(f.pending, dial)
	}
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// flushLater publishes the failures queued if the window allows it now,
// else arms window for the end of it.
func (f *fleetState) flushLater(window *time.Timer, now time.Time) {
	f.mu.Lock()
	empty := len(f.pending) == 0
	var wait time.Duration
	if !f.lastObs.IsZero() {
		wait = observationWindow - now.Sub(f.lastObs)
	}
	f.mu.Unlock()
	switch {
	case empty:
	case wait > 0:
		window.Reset(wait)
	case f.flush(now):
		window.Reset(observationWindow)
	}
}

// flush publishes one observation of the failures queued, and reports
// whether more remain.
func (f *fleetState) flush(now time.Time) (more bool) {
	f.mu.Lock()
	dials := f.pending
	f.pending, f.pendingSet = nil, map[string]struct{}{}
	f.mu.Unlock()
	if !f.svc.sharesFailures() {
		return false
	}
	failed, rest := f.svc.failuresAt(dials)
	if len(rest) > 0 {
		f.mu.Lock()
		for _, d := range rest {
			if _, ok := f.pendingSet[d]; !ok {
				f.pendingSet[d] = struct{}{}
				f.pending = append(f.pending, d)
			}
		}
		more = true
		f.mu.Unlock()
	}
	if len(failed) == 0 {
		return more
	}
	o := heartbeat.Observation{Proto: heartbeat.Proto, Kind: heartbeat.KindObservation, Gateway: f.self,
		StartedAt: f.startedAt, Seq: f.obsSeq.Add(1), Failed: failed}
	data, err := heartbeat.EncodeGateway(&o)
	if err != nil {
		return more
	}
	f.mu.Lock()
	f.lastObs = now
	f.mu.Unlock()
	if err := f.nc.Publish(heartbeat.ObservationSubject(f.svc.prefix, f.self), data); err != nil {
		if n, ok := f.svc.log.due("fleet:publish"); ok {
			f.svc.log.logger.Warn("publishing observed failures", zap.Error(err), zap.Int("similar_not_logged", n))
		}
	}
	return more
}

// failuresAt names the processes routed at dials (several ids may share
// an address), at most heartbeat.MaxObservedFailures; the dials that did
// not fit are returned. An address no longer routed is dropped: its
// instance is gone or out of routing already.
func (s *Service) failuresAt(dials []string) (failed []heartbeat.ObservedFailure, rest []string) {
	byDial := map[string][]string{}
	for _, r := range s.reg.Snapshot().Routes {
		byDial[r.Dial] = append(byDial[r.Dial], r.ID)
	}
	for i, dial := range dials {
		ids := byDial[dial]
		if len(failed)+len(ids) > heartbeat.MaxObservedFailures && len(failed) > 0 {
			return failed, dials[i:]
		}
		for _, id := range ids {
			if m, ok := s.reg.Member(id); ok && len(failed) < heartbeat.MaxObservedFailures {
				failed = append(failed, heartbeat.ObservedFailure{ID: id, StartedAt: m.StartedAt})
			}
		}
	}
	return failed, nil
}
