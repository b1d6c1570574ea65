package caddymodule

import (
	"math/rand/v2"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// slowStartFloor is the share a just-routed instance starts with, relative
// to a fully ramped one.
const slowStartFloor = 0.1

// ramp gives the weight (slowStartFloor to 1) of the i-th upstream of a
// slice of the pool; nil when no upstream is ramping.
type ramp func(i int) float64

// rampOf returns the weights of the pool slice starting at start, or nil
// when slow start is off or nobody in the pool is ramping up.
func (c *candidatePool) rampOf(start int) ramp {
	if c.slowStart <= 0 || len(c.routes) == 0 {
		return nil
	}
	now := c.now
	ramping := false
	for i := range c.routes {
		if now.Sub(c.routes[i].ActiveSince) < c.slowStart {
			ramping = true
			break
		}
	}
	if !ramping {
		return nil
	}
	return func(i int) float64 {
		age := now.Sub(c.routes[start+i].ActiveSince)
		return max(slowStartFloor, min(1, float64(age)/float64(c.slowStart)))
	}
}

// slowStart picks one of the eligible ups at random, weighted by w; nil
// when w is nil (round-robin then decides) or none is eligible.
func (p *pick) slowStart(ups []*reverseproxy.Upstream, w ramp) *reverseproxy.Upstream {
	if w == nil {
		return nil
	}
	total := 0.0
	for i, u := range ups {
		if p.eligible(u) {
			total += w(i)
		}
	}
	if total == 0 {
		return nil
	}
	x := rand.Float64() * total
	var last *reverseproxy.Upstream
	for i, u := range ups {
		if !p.eligible(u) {
			continue
		}
		last = u
		if x -= w(i); x < 0 {
			return u
		}
	}
	return last
}
