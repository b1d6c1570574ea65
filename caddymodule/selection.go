package caddymodule

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// pick is a choice among the upstreams of one pool.
type pick struct {
	req    *proxyRequest
	health *passiveHealth // nil for other sources
	now    time.Time
	// lenient also accepts instances marked failing: when every instance
	// failed recently, trying one beats refusing the request.
	lenient bool
}

func (p *pick) eligible(u *reverseproxy.Upstream) bool {
	return u.Available() && !p.req.tried(u.Dial) && (p.lenient || !p.health.failing(u.Dial, p.now))
}

// roundRobin picks, in turn, one of the eligible ups; nil if none is.
func (p *pick) roundRobin(ups []*reverseproxy.Upstream, turn *uint64) *reverseproxy.Upstream {
	eligible := 0
	for _, u := range ups {
		if p.eligible(u) {
			eligible++
		}
	}
	if eligible == 0 {
		return nil
	}
	k := int(atomic.AddUint64(turn, 1) % uint64(eligible))
	for _, u := range ups {
		if !p.eligible(u) {
			continue
		}
		if k == 0 {
			return u
		}
		k--
	}
	return nil
}

// selectTiered picks round-robin (or weighted by slow start) within the
// best tier that has an eligible upstream (every tier as one when flat),
// and records the pick as the request's next try. Before that it holds the
// previous try's recorded outcome against passive health.
func selectTiered(pool reverseproxy.UpstreamPool, r *http.Request, turn *uint64, flat bool) *reverseproxy.Upstream {
	st := requestOf(r)
	c := st.pool()
	if c != nil && (len(c.tiers) == 0 || c.tiers[len(c.tiers)-1] != len(pool)) {
		c = nil // not the pool the cx source made
	}
	p := &pick{req: st}
	if c != nil {
		p.health, p.now = c.svc.health, c.now
	} else {
		p.now = time.Now()
	}
	// A body stream a try already read cannot be sent whole again: the
	// request ends with the error of that try.
	resend := st.body.mayResend(r.Body)
	var svc *Service
	if c != nil {
		svc = c.svc
	}
	st.judge(p.health, svc, p.now, resend)
	if !resend {
		return nil
	}
	whole := [1]int{len(pool)}
	tiers := whole[:]
	if c != nil && !flat {
		tiers = c.tiers
	}
	for _, lenient := range [2]bool{false, true} {
		p.lenient = lenient
		start, end, ok := preferredTier(tiers, func(i int) bool { return p.eligible(pool[i]) })
		if !ok {
			continue
		}
		var w ramp
		if c != nil {
			w = c.rampOf(start)
		}
		u := p.slowStart(pool[start:end], w)
		if u == nil {
			u = p.roundRobin(pool[start:end], turn)
		}
		st.picked(u.Dial)
		return u
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
