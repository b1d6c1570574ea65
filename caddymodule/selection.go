package caddymodule

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-cx/caddy-cx/membership"
)

// Request variables shared by the cx upstream source and policies.
const (
	varCandidates = "cx.candidates" // *candidatesSlot
	varTried      = "cx.tried"      // *triedSet
	varBody       = "cx.body"       // *bodyTries, set for requests with a body
)

// candidateInfo is what the cx source tells the policy about the pool it
// returned.
type candidateInfo struct {
	// tiers holds the end index of each priority tier in the pool.
	tiers []int
	// svc is the service the pool came from.
	svc *Service
	// routes are the instances of the pool, in pool order (for naming the
	// instance a dial address belongs to).
	routes []membership.Route
	// pool is what the source handed to Caddy, routes[i] behind pool[i].
	pool []*reverseproxy.Upstream
	// header, if set, is the response header the cx transport names the
	// serving instance in.
	header string
	// slowStart, if set, ramps the share of newly routed instances.
	slowStart time.Duration
}

// candidatesSlot holds the pool of a request's latest try. It enters the
// request's variables once, at the first try, and is swapped atomically
// on retries: the variables are an unsynchronised map that net/http's
// dial goroutine of an earlier try may still be reading (Caddy's dial
// and the dial guard look things up in it). The first pool lives in the
// slot's own allocation, so a request without retries allocates nothing
// more.
type candidatesSlot struct {
	latest atomic.Pointer[candidateInfo]
	first  candidateInfo
}

// setCandidates records the pool of this try of r.
func setCandidates(r *http.Request, info candidateInfo) {
	if slot, ok := caddyhttp.GetVar(r.Context(), varCandidates).(*candidatesSlot); ok {
		slot.latest.Store(&info)
		return
	}
	slot := &candidatesSlot{first: info}
	slot.latest.Store(&slot.first)
	caddyhttp.SetVar(r.Context(), varCandidates, slot)
}

// candidatesOf returns the pool of the request's latest try, or nil when
// the cx source did not make it.
func candidatesOf(ctx context.Context) *candidateInfo {
	if slot, ok := caddyhttp.GetVar(ctx, varCandidates).(*candidatesSlot); ok {
		return slot.latest.Load()
	}
	return nil
}

// instanceFor returns the id and dial address of the instance a try of
// this request goes to: the upstream Caddy chose (its DialInfo), matched
// by identity in the pool, since several ids may share an address and the
// request URL's host may lose a default port or carry PROXY protocol
// information.
func (c *candidateInfo) instanceFor(req *http.Request) (id, dial string) {
	di, ok := reverseproxy.GetDialInfo(req.Context())
	if !ok {
		return c.instanceOf(req.URL.Host), req.URL.Host
	}
	for i, u := range c.pool {
		if u == di.Upstream && i < len(c.routes) {
			return c.routes[i].ID, c.routes[i].Dial
		}
	}
	return c.instanceOf(di.Address), di.Address
}

// instanceOf returns the id of the instance at dial among the pool.
func (c *candidateInfo) instanceOf(dial string) string {
	for i := range c.routes {
		if c.routes[i].Dial == dial {
			return c.routes[i].ID
		}
	}
	return ""
}

// triedSet is the upstreams one request was sent to. The proxy only asks
// for another upstream after a failure it retries, so each of them failed.
type triedSet struct {
	dials  []string
	marked int // how many of dials were marked failed already
	// lastOutcome is how the latest try ended, as the cx transport saw it.
	lastOutcome string
}

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

// infoOf returns what the cx source recorded for this pool; for other
// sources, one tier of the whole pool and no passive health.
func infoOf(r *http.Request, pool reverseproxy.UpstreamPool) candidateInfo {
	info := candidatesOf(r.Context())
	if info == nil || len(info.tiers) == 0 || info.tiers[len(info.tiers)-1] != len(pool) {
		return candidateInfo{tiers: []int{len(pool)}}
	}
	return *info
}

// pick is a choice among a slice of upstreams.
type pick struct {
	tried  *triedSet
	health *passiveHealth
	svc    *Service // for counting retries; nil for other sources
	now    time.Time
	// lenient also accepts instances marked failing: when every instance
	// failed recently, trying one beats refusing the request.
	lenient bool
}

func (p *pick) eligible(u *reverseproxy.Upstream) bool {
	return u.Available() && !p.tried.has(u.Dial) && (p.lenient || !p.health.failing(u.Dial, p.now))
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

// selectTiered picks round-robin within the best tier that has an eligible
// upstream (every tier as one when flat), and records the pick as tried.
func selectTiered(pool reverseproxy.UpstreamPool, r *http.Request, turn *uint64, flat bool) *reverseproxy.Upstream {
	info := infoOf(r, pool)
	if flat {
		info.tiers = []int{len(pool)}
	}
	p := &pick{tried: triedOf(r), now: time.Now()}
	if info.svc != nil {
		p.health = info.svc.health
		p.svc = info.svc
	}
	// A body stream a try already read cannot be sent whole again: the
	// request ends with the error of that try.
	resend := bodyTriesOf(r).mayResend(r.Body)
	p.markFailures(resend)
	if !resend {
		return nil
	}
	for _, lenient := range []bool{false, true} {
		p.lenient = lenient
		start := 0
		for _, end := range info.tiers {
			u := p.slowStart(pool[start:end], info.rampOf(start))
			if u == nil {
				u = p.roundRobin(pool[start:end], turn)
			}
			if u != nil {
				p.tried.dials = append(p.tried.dials, u.Dial)
				return u
			}
			start = end
		}
	}
	return nil
}

// markFailures marks every earlier pick of this request as failed, and
// counts the retry that follows unless there is none. A try the cx
// transport refused to send (its body was spent) is no failure of the
// instance.
func (p *pick) markFailures(retrying bool) {
	if p.health == nil {
		return
	}
	if p.tried.lastOutcome != outcomeBodySpent {
		for _, d := range p.tried.dials[p.tried.marked:] {
			p.health.fail(d, p.now)
			if retrying {
				p.svc.countRetry(p.tried.lastOutcome)
			}
		}
	}
	p.tried.marked = len(p.tried.dials)
}

// noOptions accepts a policy name followed by nothing.
func noOptions(d *caddyfile.Dispenser, name string) error {
	d.Next() // policy name
	if d.NextArg() || d.NextBlock(0) {
		return d.Errf("%s takes no arguments or options", name)
	}
	return nil
}
