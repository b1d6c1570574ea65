package membership

import "time"

// Sweep turns silent members stale, forgets old stale and left ones and
// ends flap holds. While frozen, nobody turns stale: silence then proves
// nothing. It scans the members only when the earliest of their deadlines
// has come, so a large fleet costs a scan every second or so, not one per
// call.
func (r *Registry) Sweep(now time.Time) {
	r.mu.Lock()
	if now.Before(r.nextDue) {
		r.mu.Unlock()
		return
	}
	changed := false
	next := now.Add(time.Hour)
	for id, e := range r.members {
		switch e.State {
		case StateActive, StateDraining:
			if r.frozen || now.Sub(e.judgedFrom()) < e.StaleAfter {
				break
			}
			if r.confirming(e, now) {
				next = now // look again while the probe runs
				continue
			}
			changed = changed || e.routable()
			r.markStale(e, now)
		case StateStale, StateLeft:
			if now.Sub(e.Since) > r.cfg.ForgetAfter {
				delete(r.members, id)
				r.queue(Event{Kind: EventForget, ID: id, URL: e.URL})
				continue
			}
		}
		if e.Held && !now.Before(e.HeldUntil) {
			r.settle(e, now)
			changed = changed || e.routable()
		}
		if d := r.due(e, now); d.Before(next) && !(r.frozen && (e.State == StateActive || e.State == StateDraining) && !e.Held) {
			next = d
		}
	}
	r.nextDue = next
	if changed {
		r.rebuild()
	}
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
}

// due is when e next needs the sweeper: to turn stale, to be forgotten,
// or to end its flap hold (one still ahead of now).
func (r *Registry) due(e *entry, now time.Time) time.Time {
	var d time.Time
	switch e.State {
	case StateActive, StateDraining:
		d = e.judgedFrom().Add(e.StaleAfter)
	default:
		d = e.Since.Add(r.cfg.ForgetAfter)
	}
	if e.Held && e.HeldUntil.After(now) && e.HeldUntil.Before(d) {
		d = e.HeldUntil
	}
	return d
}

// pullDue makes the next sweep come no later than e's deadline.
func (r *Registry) pullDue(e *entry, now time.Time) {
	if d := r.due(e, now); d.Before(r.nextDue) {
		r.nextDue = d
	}
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
	r.nextDue = time.Time{}
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
