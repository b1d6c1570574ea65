package caddymodule

import (
	"sync/atomic"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// The primary is the instance (or the instances, sharing one priority)
// that a new request goes to under cx_failover. The policy, the status
// page, the admin API and caddy_cx_primary all derive it the same way:
// routes in routing order (the snapshot's tiers, with instances routed
// for less than failback_delay moved behind the rest, see delayFailback),
// then the best tier with an instance not marked failing by passive
// health (preferredTier); if every instance is failing, the best tier,
// which the policy then tries anyway.

// preferredTier returns the bounds of the best tier, given by the end
// index of each, with an instance usable accepts; ok is false if none.
func preferredTier(tiers []int, usable func(i int) bool) (start, end int, ok bool) {
	for _, end := range tiers {
		for i := start; i < end; i++ {
			if usable(i) {
				return start, end, true
			}
		}
		start = end
	}
	return 0, 0, false
}

// primaryOf returns the ids of the instances a new request goes to under
// cx_failover, given the routing snapshot, passive health, the clock and
// failback_delay.
func primaryOf(snap *membership.Snapshot, health *passiveHealth, now time.Time, failbackDelay time.Duration) []string {
	routes, tiers := snap.Routes, snap.Tiers
	if failbackDelay > 0 {
		routes, tiers = delayFailback(routes, tiers, now, failbackDelay)
	}
	start, end, ok := preferredTier(tiers, func(i int) bool { return !health.failing(routes[i].Dial, now) })
	if !ok && len(tiers) > 0 {
		start, end = 0, tiers[0]
	}
	ids := make([]string, 0, end-start)
	for _, r := range routes[start:end] {
		ids = append(ids, r.ID)
	}
	return ids
}

// primaryIDs returns the instances that take new requests now under the
// failover policy (see primaryOf).
func (s *Service) primaryIDs(now time.Time) []string {
	return primaryOf(s.reg.Snapshot(), s.health, now, s.failback.delay())
}

// failbackSetting is the failback_delay the service's upstream source was
// provisioned with, for deriving the primary outside requests.
type failbackSetting struct{ nanos atomic.Int64 }

func (f *failbackSetting) set(d time.Duration) { f.nanos.Store(int64(d)) }

func (f *failbackSetting) delay() time.Duration { return time.Duration(f.nanos.Load()) }
