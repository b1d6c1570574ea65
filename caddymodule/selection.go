package caddymodule

import (
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Request variables shared by the cx upstream source and policies.
const (
	varTiers = "cx.tiers" // []int: end index of each priority tier in the pool
	varTried = "cx.tried" // *triedSet: upstreams this request already failed on
)

// triedSet is the upstreams one request was sent to. The proxy only asks
// for another upstream after a failure, so each of them failed it.
type triedSet struct{ dials []string }

func (t *triedSet) has(dial string) bool {
	for _, d := range t.dials {
		if d == dial {
			return true
		}
	}
	return false
}

func triedOf(r *http.Request) *triedSet {
	if t, ok := caddyhttp.GetVar(r.Context(), varTried).(*triedSet); ok {
		return t
	}
	t := &triedSet{}
	caddyhttp.SetVar(r.Context(), varTried, t)
	return t
}

// tiersOf returns the tier boundaries the cx source recorded for this
// pool, or one tier of the whole pool.
func tiersOf(r *http.Request, pool reverseproxy.UpstreamPool) []int {
	tiers, ok := caddyhttp.GetVar(r.Context(), varTiers).([]int)
	if !ok || len(tiers) == 0 || tiers[len(tiers)-1] != len(pool) {
		return []int{len(pool)}
	}
	return tiers
}

// roundRobin picks, in turn, one of ups that is available and was not
// tried by this request yet; nil if there is none.
func roundRobin(ups []*reverseproxy.Upstream, tried *triedSet, turn *uint64) *reverseproxy.Upstream {
	eligible := 0
	for _, u := range ups {
		if u.Available() && !tried.has(u.Dial) {
			eligible++
		}
	}
	if eligible == 0 {
		return nil
	}
	k := int(atomic.AddUint64(turn, 1) % uint64(eligible))
	for _, u := range ups {
		if !u.Available() || tried.has(u.Dial) {
			continue
		}
		if k == 0 {
			return u
		}
		k--
	}
	return nil
}

// selectTiered picks round-robin within the best tier that has an eligible
// upstream, and records the pick as tried.
func selectTiered(pool reverseproxy.UpstreamPool, r *http.Request, turn *uint64, tiers []int) *reverseproxy.Upstream {
	tried := triedOf(r)
	start := 0
	for _, end := range tiers {
		if u := roundRobin(pool[start:end], tried, turn); u != nil {
			tried.dials = append(tried.dials, u.Dial)
			return u
		}
		start = end
	}
	return nil
}

// noOptions accepts a policy name followed by nothing.
func noOptions(d *caddyfile.Dispenser, name string) error {
	d.Next() // policy name
	if d.NextArg() || d.NextBlock(0) {
		return d.Errf("%s takes no arguments or options", name)
	}
	return nil
}
