package membership

import "time"

// confirmation is the state of a probe of a silent member's url.
type confirmation struct {
	probing     bool
	confirmedAt time.Time // last time the url answered while heartbeats did not
}

// confirming reports whether e, due to turn stale, is being (or has just
// been) confirmed alive by probing its url; it starts a probe if needed.
// The lock must be held.
func (r *Registry) confirming(e *entry, now time.Time) bool {
	if r.cfg.Confirm == nil {
		return false
	}
	if e.probing {
		return true
	}
	e.probing = true
	go r.probe(r.cfg.Confirm, e.ID, e.StartedAt, e.URL, now)
	return true
}

// probe asks confirm (Config.Confirm when the probe began) about url; asked is the registry's clock when the
// sweep asked, which the answer's time is reckoned from.
func (r *Registry) probe(confirm func(string) bool, id string, startedAt time.Time, url string, asked time.Time) {
	began := time.Now()
	alive := confirm(url)
	now := asked.Add(time.Since(began))
	r.mu.Lock()
	e, ok := r.members[id]
	if !ok || !e.StartedAt.Equal(startedAt) || !e.probing {
		r.mu.Unlock()
		return
	}
	e.probing = false
	r.nextDue = time.Time{}
	changed := false
	switch {
	case e.State != StateActive && e.State != StateDraining:
	case r.frozen || now.Sub(e.judgedFrom()) < e.StaleAfter:
		// heard from again, or NATS lost meanwhile: nothing to judge now
	case alive:
		e.confirmedAt = now
		r.queue(Event{Kind: EventAliveUnheard, ID: id, URL: url,
			Detail: "heartbeats stopped but the url still answers: kept in routing; check the instance's NATS connection"})
	default:
		changed = e.routable()
		r.markStale(e, now)
	}
	if changed {
		r.rebuild()
	}
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
}
