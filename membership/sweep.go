package membership

import "time"

// Sweep turns silent members stale and forgets old stale and left ones.
// While frozen, nobody turns stale: silence then proves nothing.
func (r *Registry) Sweep(now time.Time) {
	r.mu.Lock()
	changed := false
	for id, e := range r.members {
		switch e.State {
		case StateActive, StateDraining:
			if r.frozen || now.Sub(e.judgedFrom()) < e.StaleAfter || r.confirming(e, now) {
				continue
			}
			changed = changed || e.routable()
			r.markStale(e, now)
		case StateStale, StateLeft:
			if now.Sub(e.Since) > r.cfg.ForgetAfter {
				delete(r.members, id)
				r.queue(Event{Kind: EventForget, ID: id, URL: e.URL})
			}
		}
	}
	if r.releaseHolds(now) || changed {
		r.rebuild()
	}
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
}

func (r *Registry) markStale(e *entry, now time.Time) {
	if e.State == StateActive {
		r.noteExit(e, now)
	}
	e.State, e.Since, e.streak = StateStale, now, 0
	r.settle(e, now)
	r.queue(Event{Kind: EventStale, ID: e.ID, URL: e.URL})
}

// Freeze suspends staleness: the gateway lost its NATS connection.
func (r *Registry) Freeze() {
	r.mu.Lock()
	r.frozen = true
	r.mu.Unlock()
}

// Thaw resumes staleness after a reconnect and gives every live member a
// fresh stale_after from now before judging it.
func (r *Registry) Thaw(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.frozen {
		return
	}
	r.frozen = false
	for _, e := range r.members {
		if e.State == StateActive || e.State == StateDraining {
			e.thawedAt = now
		}
	}
}

// judgedFrom is the time from which e's silence counts: its last
// heartbeat, or the last thaw if that is later.
func (e *entry) judgedFrom() time.Time {
	from := e.LastSeen
	for _, t := range []time.Time{e.thawedAt, e.confirmedAt} {
		if t.After(from) {
			from = t
		}
	}
	return from
}
