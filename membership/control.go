package membership

import (
	"encoding/json"
	"fmt"
	"maps"
	"time"
	"unicode/utf8"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// ControlState is what an operator set for an instance, fleet-wide.
type ControlState string

// The control states. ControlReady (or no control at all) leaves routing
// to the instance's heartbeats.
const (
	ControlReady ControlState = "ready"
	// ControlDrain takes no new requests to the process that was running
	// when it was set; requests in flight finish. A restarted instance (a
	// new started_at) is routed again: a rolling deploy drains, replaces,
	// and moves on.
	ControlDrain ControlState = "drain"
	// ControlMaintenance keeps the instance id out of routing, across its
	// restarts, until it is set ready.
	ControlMaintenance ControlState = "maintenance"
)

// Limits of a control entry, which anyone allowed to write the control
// bucket can write: it is decoded as hostile input.
const (
	MaxControlSize  = 1024
	MaxControlByLen = 128
)

// Control is one instance's control entry: the value of its key in the
// fleet's control bucket.
type Control struct {
	State ControlState `json:"state"`
	// Process is the started_at of the process a drain applies to; zero
	// for maintenance and ready.
	Process time.Time `json:"instance_started_at,omitzero"`
	// By says who set it (the admin API, or the status page's user) and
	// Gateway through which gateway; At is when, on that gateway's clock.
	By      string    `json:"by"`
	Gateway string    `json:"gateway"`
	At      time.Time `json:"at"`
}

// Holds reports whether c keeps the member out of routing.
func (c Control) Holds(m *Member) bool {
	switch c.State {
	case ControlMaintenance:
		return true
	case ControlDrain:
		return c.Process.IsZero() || c.Process.Equal(m.StartedAt)
	}
	return false
}

// Encode returns the entry's JSON.
func (c Control) Encode() []byte {
	b, _ := json.Marshal(c)
	return b
}

// controlFields are the keys of a control entry. They are matched
// exactly: encoding/json would match "State" or "STATE" to state, so that
// of two case variants the last would win unseen.
var controlFields = map[string]bool{"state": true, "instance_started_at": true, "by": true, "gateway": true, "at": true}

// ParseControl decodes a control entry strictly: bounded, one JSON object
// of known fields only (exactly spelt), a known state.
func ParseControl(data []byte) (Control, error) {
	var c Control
	if len(data) > MaxControlSize {
		return c, fmt.Errorf("control entry of %d bytes, more than %d", len(data), MaxControlSize)
	}
	if !utf8.Valid(data) {
		return c, fmt.Errorf("control entry is not valid UTF-8")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return c, fmt.Errorf("control entry: %v", err)
	}
	if obj == nil {
		return c, fmt.Errorf("control entry is not a JSON object")
	}
	for k := range obj {
		if !controlFields[k] {
			return c, fmt.Errorf("control entry: unknown field %q", heartbeat.Truncate(k, 32))
		}
	}
	// Every key is known and exact, so decoding the struct can neither
	// meet an unknown field nor fold a case variant.
	if err := json.Unmarshal(data, &c); err != nil {
		return Control{}, fmt.Errorf("control entry: %v", err)
	}
	switch c.State {
	case ControlReady, ControlDrain, ControlMaintenance:
	default:
		return Control{}, fmt.Errorf("control entry: state %q is not ready, drain or maintenance", heartbeat.Truncate(string(c.State), 32))
	}
	if utf8.RuneCountInString(c.By) > MaxControlByLen || utf8.RuneCountInString(c.Gateway) > MaxControlByLen {
		return Control{}, fmt.Errorf("control entry: by or gateway longer than %d characters", MaxControlByLen)
	}
	// Times are shown and re-encoded (status page, admin API): one JSON
	// cannot encode, or no real clock gives, is refused.
	for _, tm := range []struct {
		name string
		t    time.Time
	}{{"instance_started_at", c.Process}, {"at", c.At}} {
		if y := tm.t.UTC().Year(); !tm.t.IsZero() && (y < minStartYear || y > maxStartYear) {
			return Control{}, fmt.Errorf("control entry: %s is in the year %d in UTC; allowed are %d to %d", tm.name, y, minStartYear, maxStartYear)
		}
	}
	return c, nil
}

// SetControl records id's control entry (ControlReady or the zero Control
// clears it) and rebuilds routing at once if that changes it. The rebuild
// does not wait for a coalesced one (Config.RebuildEvery): an operator's
// drain takes effect before SetControl returns. A coalesced rebuild still
// pending publishes again when due, which is harmless.
func (r *Registry) SetControl(id string, c Control) { r.setControl(id, c, time.Now()) }

func (r *Registry) setControl(id string, c Control, now time.Time) {
	r.mu.Lock()
	if r.controls == nil {
		r.controls = make(map[string]Control)
	}
	if c.State == "" || c.State == ControlReady {
		delete(r.controls, id)
	} else {
		r.controls[id] = c
	}
	if e := r.members[id]; e != nil {
		before := e.route()
		e.Control = r.controls[id]
		r.settle(e, now) // a released member enters routing now (slow start)
		if e.route() != before {
			r.rebuildNow()
		}
	}
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
}

// SetControls replaces every control entry (the bucket as first read) and
// releases routing when Config.AwaitControls held it back.
func (r *Registry) SetControls(all map[string]Control) { r.setControls(all, time.Now()) }

func (r *Registry) setControls(all map[string]Control, now time.Time) {
	r.mu.Lock()
	r.controls = make(map[string]Control, len(all))
	for id, c := range all {
		if c.State != "" && c.State != ControlReady {
			r.controls[id] = c
		}
	}
	for id, e := range r.members {
		e.Control = r.controls[id]
		r.settle(e, now)
	}
	r.controlsLoaded = true
	r.rebuildNow()
	events := r.takeEvents()
	r.mu.Unlock()
	r.report(events)
}

// Controls returns a copy of the control entries in force.
func (r *Registry) Controls() map[string]Control {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.controls)
}

// Member returns a copy of the member id, if known.
func (r *Registry) Member(id string) (Member, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.members[id]
	if e == nil {
		return Member{}, false
	}
	m := e.Member
	m.LeaderRoles = append([]string(nil), e.LeaderRoles...)
	m.Meta = nil
	return m, true
}
