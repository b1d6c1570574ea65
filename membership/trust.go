package membership

import (
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// The years a started_at may fall in, in UTC: later ones do not survive
// JSON marshalling (the status page), earlier ones are no real process.
const (
	minStartYear = 2000
	maxStartYear = 9999
)

// refuse returns why m may not be applied at all, as an event reason and
// a detail for the log; "" admits it. Each rule here holds whatever the
// registry already knows.
func (c *Config) refuse(m *heartbeat.Message, now time.Time) (reason, detail string) {
	if !c.allowedID(m.ID) {
		return "id", "id " + m.ID + " matches none of allow_ids"
	}
	if reason, detail := refuseClock(m.StartedAt, now, c.ClockSkew); reason != "" {
		return reason, detail
	}
	if why := c.wrongScheme(m.URL); why != "" {
		return "scheme", why
	}
	if !c.allowed(m.URL) {
		return "network", "url " + m.URL + " is outside allow_networks"
	}
	if c.Deny != nil {
		if why := c.Deny(m.URL); why != "" {
			return "loop", why
		}
	}
	return "", ""
}

// refuseClock refuses a started_at outside the years allowed or beyond
// skew ahead of now.
func refuseClock(started, now time.Time, skew time.Duration) (reason, detail string) {
	if y := started.UTC().Year(); y < minStartYear || y > maxStartYear {
		return "clock", fmt.Sprintf("started_at is in the year %d in UTC; allowed are %d to %d", y, minStartYear, maxStartYear)
	}
	if ahead := started.Sub(now); ahead > skew {
		return "clock", fmt.Sprintf("started_at is %v ahead of the gateway's clock, more than clock_skew %v: fix the sender's clock (NTP) or raise clock_skew",
			ahead.Round(time.Millisecond), skew)
	}
	return "", ""
}

func (c *Config) allowedID(id string) bool {
	if len(c.AllowIDs) == 0 {
		return true
	}
	for _, g := range c.AllowIDs {
		if ok, _ := path.Match(g, id); ok {
			return true
		}
	}
	return false
}

// wrongScheme explains, for a url of the other scheme than the gateway's,
// what to change; "" means the scheme is right.
func (c *Config) wrongScheme(rawURL string) string {
	scheme, _, _ := strings.Cut(rawURL, "://")
	if strings.EqualFold(scheme, c.Scheme) {
		return ""
	}
	if c.Scheme == "http" {
		return "url " + rawURL + " is https but this gateway dials instances in clear: to reach https instances, " +
			"give cx_proxy `transport http { tls }` (with `dynamic cx`, also `scheme https`); all of its instances then announce https urls"
	}
	return "url " + rawURL + " is http but this gateway dials instances with TLS and never sends in clear: " +
		"announce an https url, or serve http instances from a cx_proxy without tls"
}

// priority is the effective priority of m's process: the operator's
// override, else the announced one, clamped into PriorityRange.
func (r *Registry) priority(m *heartbeat.Message) int { return r.priorityOf(m.ID, m.Priority) }

func (r *Registry) priorityOf(id string, announced int) int {
	if p, ok := r.cfg.Priority[id]; ok {
		return p
	}
	rg := r.cfg.PriorityRange
	if rg == nil {
		return announced
	}
	return min(max(announced, rg.Min), rg.Max)
}

// noteClamp reports once per process that its announced priority was
// clamped.
func (r *Registry) noteClamp(e *entry) {
	if e.Priority == e.AnnouncedPriority || e.clampedFor.Equal(e.StartedAt) {
		return
	}
	if _, override := r.cfg.Priority[e.ID]; override {
		return
	}
	e.clampedFor = e.StartedAt
	r.queue(Event{Kind: EventPriorityClamped, ID: e.ID, URL: e.URL,
		Detail: fmt.Sprintf("announced priority %d is outside priority_range %d to %d; routed with %d",
			e.AnnouncedPriority, r.cfg.PriorityRange.Min, r.cfg.PriorityRange.Max, e.Priority)})
}

// sameEndpoint reports whether two valid urls reach the same place (a
// trailing slash or the scheme's case aside). Equal strings, the steady
// state, cost no parsing.
func sameEndpoint(a, b string) bool {
	if a == b {
		return true
	}
	sa, _, _ := strings.Cut(a, "://")
	sb, _, _ := strings.Cut(b, "://")
	return strings.EqualFold(sa, sb) && heartbeat.HostPort(a) == heartbeat.HostPort(b)
}
