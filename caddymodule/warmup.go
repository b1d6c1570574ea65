package caddymodule

import (
	"context"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// WarmUp is how long after the gateway starts watching a request that
// finds no instance waits for the answers to the first discover, instead
// of getting 503 from a gateway that has not heard from anyone yet.
const WarmUp = time.Second

// warmSnapshot returns the routing snapshot; during the start-up window it
// waits (polling, bounded by WarmUp and the request) for a first instance.
func (s *Service) warmSnapshot(ctx context.Context) *membership.Snapshot {
	snap := s.reg.Snapshot()
	if len(snap.Routes) > 0 {
		return snap
	}
	until := time.Unix(0, s.warmUntil.Load())
	for time.Now().Before(until) {
		select {
		case <-ctx.Done():
			return snap
		case <-time.After(5 * time.Millisecond):
		}
		if snap = s.reg.Snapshot(); len(snap.Routes) > 0 {
			return snap
		}
	}
	return snap
}
