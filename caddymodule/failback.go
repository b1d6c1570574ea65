package caddymodule

import (
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// delayFailback moves routes that entered routing less than delay ago
// behind the others (keeping tiers), so that a returning primary does not
// take all traffic at once; it is used only when nothing else is available.
func delayFailback(routes []membership.Route, tiers []int, now time.Time, delay time.Duration) ([]membership.Route, []int) {
	young := 0
	for i := range routes {
		if now.Sub(routes[i].ActiveSince) < delay {
			young++
		}
	}
	if young == 0 || young == len(routes) {
		return routes, tiers
	}
	out := make([]membership.Route, 0, len(routes))
	var outTiers []int
	for _, wantYoung := range []bool{false, true} {
		start := 0
		for _, end := range tiers {
			for _, r := range routes[start:end] {
				if (now.Sub(r.ActiveSince) < delay) == wantYoung {
					out = append(out, r)
				}
			}
			if n := len(out); n > 0 && (len(outTiers) == 0 || outTiers[len(outTiers)-1] != n) {
				outTiers = append(outTiers, n)
			}
			start = end
		}
	}
	return out, outTiers
}
