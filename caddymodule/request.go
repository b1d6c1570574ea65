package caddymodule

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-cx/caddy-cx/membership"
)

// A proxied request goes through reverse_proxy's retry loop: for each try
// the upstream source (GetUpstreams) returns a pool, the selection policy
// (Select) picks one upstream of it, and the transport (RoundTrip) sends
// the try. The cx modules share what they learn about the request in one
// proxyRequest, kept under one request variable:
//
//   - the upstream source creates it at the first try and records the
//     pool of every try (candidatePool);
//   - the policy records which instance each try goes to, and, when asked
//     for another instance, holds the recorded outcome of the previous try
//     against that instance's passive health;
//   - the transport records how each try ended, and what it did with the
//     request body (bodyreplay.go).
//
// The request's variables are an unsynchronised map that net/http's dial
// goroutine of an earlier try may still read (Caddy's dial and the dial
// guard look things up in it), so the variable is set once, before the
// first try dials, and never again. Everything else is written and read on
// the request's own goroutine (source, policy and transport run there one
// after the other), except: the latest pool, which the dial guard reads,
// hence its atomic pointer; the body watch (attemptBody), which Go's
// transport reads from its own goroutines, hence its atomic state; and the
// wait node, which the service's inflight lock guards, since a membership
// event (an instance turning stale) walks the waiting tries.

// varRequest is the request variable holding the request's *proxyRequest.
const varRequest = "cx.request"

// proxyRequest is what the cx modules know of one proxied request.
type proxyRequest struct {
	// latest is the pool of the latest try; nil until an upstream source
	// of cx made one. The first pool lives in first, so that a request
	// without retries allocates nothing more.
	latest atomic.Pointer[candidatePool]
	first  candidatePool
	// tries are the instances the request was sent to, in order, with how
	// each try ended; triesBuf holds the first ones without allocating.
	tries    []try
	triesBuf [2]try
	// judged is how many tries were held against passive health already.
	judged int
	// body is what the transport saw of the request body.
	body bodyTries
	// smallUps and smallUp hold the first pool's upstreams when it is
	// small (a primary and a backup), saving two allocations per request.
	smallUps [2]*reverseproxy.Upstream
	smallUp  [2]reverseproxy.Upstream
	// wait lists the try in flight among those waiting on its instance
	// (inflight.go); the service's lock guards it.
	wait waitNode
}

// try is one try of the request at one upstream.
type try struct {
	dial string // the upstream's address
	id   string // the instance, when a cx pool named it
	// outcome is how the try ended as the cx transport saw it (an
	// outcome* constant); "" when no cx transport sent it.
	outcome string
	status  int // the response status, if a response came back
}

// candidatePool is what the cx upstream source returned for one try.
type candidatePool struct {
	// svc is the service the pool came from.
	svc *Service
	// routes are the instances of the pool, best tier first; ups are what
	// the source handed to Caddy, routes[i] behind ups[i].
	routes []membership.Route
	ups    []*reverseproxy.Upstream
	// tiers holds the end index of each priority tier in routes.
	tiers []int
	// now is the gateway's clock when the pool was made, the time the
	// policy judges passive health and slow start by.
	now time.Time
	// header, if set, is the response header the cx transport names the
	// serving instance in.
	header string
	// slowStart, if set, ramps the share of newly routed instances.
	slowStart time.Duration
}

// requestIn returns the state of the request ctx belongs to, or nil when
// no cx module made one.
func requestIn(ctx context.Context) *proxyRequest {
	st, _ := caddyhttp.GetVar(ctx, varRequest).(*proxyRequest)
	return st
}

// requestOf returns r's state, creating it if no cx module did yet. Every
// caller runs before the request's first dial, so the variable is set
// before any dial goroutine may read the map.
func requestOf(r *http.Request) *proxyRequest {
	if st := requestIn(r.Context()); st != nil {
		return st
	}
	st := &proxyRequest{}
	st.tries = st.triesBuf[:0]
	caddyhttp.SetVar(r.Context(), varRequest, st)
	return st
}

// setPool records the pool of this try.
func (st *proxyRequest) setPool(p candidatePool) {
	if st.latest.Load() == nil {
		st.first = p
		st.latest.Store(&st.first)
		return
	}
	// A copy, so that p itself never escapes: the first pool costs nothing.
	retry := new(candidatePool)
	*retry = p
	st.latest.Store(retry)
}

// upstreamsFor returns fresh upstreams for a pool of routes: for the first
// pool of a small fleet, those held in st itself. A later pool gets new
// ones, since the dial of an earlier try may still use the first.
func (st *proxyRequest) upstreamsFor(routes []membership.Route) []*reverseproxy.Upstream {
	var ups []*reverseproxy.Upstream
	if st != nil && st.latest.Load() == nil && len(routes) <= len(st.smallUps) {
		ups = st.smallUps[:len(routes)]
		for i := range ups {
			ups[i] = &st.smallUp[i]
		}
		return ups
	}
	ups = make([]*reverseproxy.Upstream, len(routes))
	for i := range ups {
		ups[i] = new(reverseproxy.Upstream)
	}
	return ups
}

// pool returns the pool of the latest try, or nil.
func (st *proxyRequest) pool() *candidatePool {
	if st == nil {
		return nil
	}
	return st.latest.Load()
}

// poolIn returns the pool of the latest try of the request ctx belongs
// to, or nil when the cx source did not make it.
func poolIn(ctx context.Context) *candidatePool {
	return requestIn(ctx).pool()
}

// tried reports whether a try of the request went to dial.
func (st *proxyRequest) tried(dial string) bool {
	for i := range st.tries {
		if st.tries[i].dial == dial {
			return true
		}
	}
	return false
}

// picked records that the next try goes to dial.
func (st *proxyRequest) picked(dial string) {
	st.tries = append(st.tries, try{dial: dial})
}

// ended records how the latest try ended: the try the policy picked, or
// a new one at dial when another policy chose the upstream.
func (st *proxyRequest) ended(dial, id, outcome string, status int) {
	if n := len(st.tries); n > 0 && st.tries[n-1].outcome == "" {
		t := &st.tries[n-1]
		t.id, t.outcome, t.status = id, outcome, status
		return
	}
	st.tries = append(st.tries, try{dial: dial, id: id, outcome: outcome, status: status})
}

// judge holds the tries since the last call against passive health: the
// proxy asks the policy again after a try it retries, and the tries that
// count as the instance's failure mark it (failure). When retrying, each
// of them also counts as a retry of the service, by its outcome.
func (st *proxyRequest) judge(health *passiveHealth, svc *Service, now time.Time, retrying bool) {
	if health != nil {
		for _, t := range st.tries[st.judged:] {
			if t.outcome == outcomeBodySpent {
				continue // refused before dialing: no fault of the instance
			}
			if t.failure() {
				health.fail(t.dial, now)
			}
			if retrying {
				svc.countRetry(t.outcome)
			}
		}
	}
	st.judged = len(st.tries)
}

// failure reports whether the try counts against its instance, as nginx
// counts: connection errors, timeouts and errors, and 502, 503 or 504. A
// try no cx transport sent counts too: the proxy only asks again after a
// failure it retries.
func (t *try) failure() bool {
	switch t.outcome {
	case "", outcomeDial, outcomeStale, outcomeError:
		return true
	case outcomeStatus5x:
		return t.status == http.StatusBadGateway || t.status == http.StatusServiceUnavailable ||
			t.status == http.StatusGatewayTimeout
	}
	return false
}

// instanceOfTry returns the id and dial address of the instance a try of
// this request goes to: the upstream Caddy chose (its DialInfo), matched
// by identity in the pool, since several ids may share an address and the
// request URL's host may lose a default port or carry PROXY protocol
// information.
func (c *candidatePool) instanceOfTry(req *http.Request) (id, dial string) {
	di, ok := reverseproxy.GetDialInfo(req.Context())
	if !ok {
		return c.idAt(req.URL.Host), req.URL.Host
	}
	for i, u := range c.ups {
		if u == di.Upstream && i < len(c.routes) {
			return c.routes[i].ID, c.routes[i].Dial
		}
	}
	return c.idAt(di.Address), di.Address
}

// idAt returns the id of the first instance of the pool at dial.
func (c *candidatePool) idAt(dial string) string {
	for i := range c.routes {
		if c.routes[i].Dial == dial {
			return c.routes[i].ID
		}
	}
	return ""
}
