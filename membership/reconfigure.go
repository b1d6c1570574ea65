package membership

import (
	"fmt"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Reconfigure applies cfg to a running registry (a config reload) and
// keeps its members: each one is judged again by the new admission rules
// (allow_ids, clock, scheme, allow_networks, Deny) and dropped with an
// EventForget whose Reason says why if they now refuse it; priorities,
// staleness deadlines and holds follow the new settings; the snapshot is
// rebuilt at once. cfg is validated as by New; on error nothing changes.
// The prefix cannot change (a registry serves one), and OnEvent is the
// one given to New.
func (r *Registry) Reconfigure(cfg Config) error {
	return r.reconfigure(cfg, time.Now())
}

func (r *Registry) reconfigure(cfg Config, now time.Time) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if cfg.Prefix != r.prefix {
		return fmt.Errorf("the subject prefix of a registry cannot change (%s to %s): make a new registry", r.prefix, cfg.Prefix)
	}
	cfg.OnEvent = r.onEvent
	r.mu.Lock()
	r.cfg = cfg
	if !cfg.ConsistentVersions {
		r.served = ""
	}
	for id, e := range r.members {
		if reason, detail := cfg.refuse(admissionOf(e), now); reason != "" {
			delete(r.members, id)
			r.queue(Event{Kind: EventForget, ID: id, URL: e.URL, Reason: reason,
				Detail: "dropped: the new configuration refuses it: " + detail})
			continue
		}
		r.rejudge(e, now)
	}
	r.shrinkTo(cfg.MaxInstances)
	r.nextDue = time.Time{} // deadlines changed: the next sweep looks at everyone
	r.rebuildNow()
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
	return nil
}

// admissionOf is what the admission rules look at in e's last message.
func admissionOf(e *entry) *heartbeat.Message {
	return &heartbeat.Message{ID: e.ID, URL: e.URL, StartedAt: e.StartedAt}
}

// rejudge brings a kept member in line with the new settings. A member
// routed already stays routed under a higher rise: it has risen.
func (r *Registry) rejudge(e *entry, now time.Time) {
	e.Priority = r.priorityOf(e.ID, e.AnnouncedPriority)
	e.StaleAfter = r.cfg.staleAfter(e.Interval)
	if e.routable() {
		e.streak = max(e.streak, r.cfg.Rise)
	}
	r.settle(e, now)
	r.noteClamp(e)
}

// shrinkTo drops stale and left members, longest gone first, while there
// are more than limit members; live ones are kept (a lower max_instances
// refuses new ids, it does not cut routing).
func (r *Registry) shrinkTo(limit int) {
	for len(r.members) > limit {
		var victim *entry
		for _, e := range r.members {
			if (e.State == StateStale || e.State == StateLeft) && (victim == nil || e.Since.Before(victim.Since)) {
				victim = e
			}
		}
		if victim == nil {
			return
		}
		delete(r.members, victim.ID)
		r.queue(Event{Kind: EventForget, ID: victim.ID, URL: victim.URL, Reason: "capacity",
			Detail: "dropped: more members than the new max_instances"})
	}
}
