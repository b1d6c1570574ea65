package membership

import "time"

// damping is what the registry remembers of an id to judge rise and flaps.
// It outlives restarts of the id: a crash-looping instance is flapping.
type damping struct {
	streak    int         // consecutive ready heartbeats of this process
	exits     []time.Time // recent exits from active, within the window
	holds     int         // holds in a row
	lastHold  time.Time
	wasRouted bool
}

// settle recomputes whether e is held out of routing and when it entered
// routing; call it after any change of e's state.
func (r *Registry) settle(e *entry, now time.Time) {
	e.Held = e.State == StateActive && (e.streak < r.cfg.Rise || now.Before(e.HeldUntil))
	routed := e.routable()
	if routed && !e.wasRouted {
		e.ActiveSince = now
	}
	e.wasRouted = routed
}

// noteExit records that e left active state at now and holds it out of
// routing if it did so more than FlapLimit times within FlapWindow.
func (r *Registry) noteExit(e *entry, now time.Time) {
	if r.cfg.FlapLimit <= 0 {
		return
	}
	kept := e.exits[:0]
	for _, t := range e.exits {
		if now.Sub(t) < r.cfg.FlapWindow {
			kept = append(kept, t)
		}
	}
	e.exits = append(kept, now)
	if len(e.exits) <= r.cfg.FlapLimit {
		return
	}
	if now.Sub(e.lastHold) > r.cfg.FlapWindow+MaxFlapHold {
		e.holds = 0
	}
	hold := min(r.cfg.FlapHold<<e.holds, MaxFlapHold)
	e.holds++
	e.lastHold = now
	e.HeldUntil = now.Add(hold)
	e.exits = e.exits[:0]
	r.queue(Event{Kind: EventFlapping, ID: e.ID, URL: e.URL,
		Detail: "left active more than flap_limit times within flap_window; held out for " + hold.String()})
}
