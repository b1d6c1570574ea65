package caddymodule

import (
	"fmt"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// RebuildEvery caps how long routing changes are coalesced; small fleets
// rebuild within microseconds (see membership.Config.RebuildEvery).
const RebuildEvery = 50 * time.Millisecond

// MaxCandidates bounds the upstreams handed to Caddy per request, whatever
// the size of the fleet: the best tiers in full while they fit, then a
// rotating window.
const MaxCandidates = 16

// Upstreams is the `dynamic cx` upstream source: the active instances
// announced on NATS under one subject prefix, best priority first.
type Upstreams struct {
	// SubjectPrefix is the prefix instances publish under
	// (PREFIX.hb.ID). Default: cx.ha.
	SubjectPrefix string `json:"subject_prefix,omitempty"`

	// StaleAfter is the silence after which an instance is taken out of
	// routing. Default: 3 times the instance's own heartbeat interval.
	StaleAfter caddy.Duration `json:"stale_after,omitempty"`

	// ForgetAfter is how long stale and left instances stay listed on the
	// status page and in metrics. Default: 5m.
	ForgetAfter caddy.Duration `json:"forget_after,omitempty"`

	// AllowNetworks restricts where announced urls may point: an IP
	// literal must be inside these CIDR networks; a DNS name is checked on
	// the resolved address when dialing. Default: any.
	AllowNetworks []string `json:"allow_networks,omitempty"`

	// AllowIDs, when set, admits only instance ids matching one of these
	// globs (`*`, `?`, `[a-z]`, as Go's path.Match); heartbeats of other
	// ids are rejected and counted (reason `id`). Default: any id.
	AllowIDs []string `json:"allow_ids,omitempty"`

	// PriorityRange, when set, clamps the priority instances announce into
	// min..max (logged once per process), so that an unexpected publisher
	// cannot make itself primary. The Priority overrides are not clamped.
	PriorityRange *PriorityRange `json:"priority_range,omitempty"`

	// ClockSkew is how far ahead of the gateway's clock an instance's
	// started_at may be; later ones are rejected (reason `clock`).
	// Default: 1m.
	ClockSkew caddy.Duration `json:"clock_skew,omitempty"`

	// Scheme is the scheme of the urls admitted: `http` (default) or
	// `https`; urls of the other scheme are rejected (reason `scheme`), so
	// that nothing is downgraded or sent in clear. cx_proxy sets https
	// when its transport has tls.
	Scheme string `json:"scheme,omitempty"`

	// Priority overrides the priority instances announce, by instance id
	// (lower is preferred).
	Priority map[string]int `json:"priority,omitempty"`

	// FailTimeout is how long an instance that failed a request (a
	// connection error; 502, 503, 504 or a timeout of an idempotent
	// request) is passed over while others are available, as nginx's
	// fail_timeout. A restart or a return from stale clears it. Default: 10s.
	FailTimeout caddy.Duration `json:"fail_timeout,omitempty"`

	// ShareFailures shares the failures this gateway counts (as
	// FailTimeout does) with the other gateways of the subject prefix, and
	// applies theirs, so that every gateway passes over a failing instance
	// together: observations on PREFIX.obs.<gateway_id>, applied only
	// from announced gateways and only to the instance process they name.
	// false turns both directions off. Default: true.
	ShareFailures *bool `json:"share_failures,omitempty"`

	// MaxInstances bounds how many instances are tracked; heartbeats of
	// further ids are rejected and counted. Default: 10000.
	MaxInstances int `json:"max_instances,omitempty"`

	// HeaderInstance, if set, is a response header the `cx` transport adds
	// to every proxied response, naming the instance that served it (for
	// debugging load balancers). Off by default; the Caddyfile option
	// `header_instance` without a name uses X-Cx-Instance.
	HeaderInstance string `json:"header_instance,omitempty"`

	// Versions is `any` (default) or `consistent`: new requests then go to
	// instances of one version only, and during a rolling deploy the
	// gateway switches to the newer version in one step, once it has at
	// least as many active instances as the old one (or the old ones are
	// gone), so that a user's requests never alternate between versions.
	Versions string `json:"versions,omitempty"`

	// Rise is how many consecutive ready heartbeats a new, returning or
	// restarted instance needs before it is routed. Default: 1.
	Rise int `json:"rise,omitempty"`

	// FlapLimit, when set, holds out of routing an instance that left
	// active state more than this many times within FlapWindow (default
	// 1m), for FlapHold (default 10s), doubling with every further hold
	// up to 5m.
	FlapLimit  int            `json:"flap_limit,omitempty"`
	FlapWindow caddy.Duration `json:"flap_window,omitempty"`
	FlapHold   caddy.Duration `json:"flap_hold,omitempty"`

	// SlowStart ramps a newly routed instance's share of round-robin
	// traffic linearly from a tenth to its full share over this duration.
	SlowStart caddy.Duration `json:"slow_start,omitempty"`

	// FailbackDelay keeps a newly routed instance from taking over from
	// instances already serving (e.g. a primary that just came back) for
	// this long: until then it is used only if they are not available.
	FailbackDelay caddy.Duration `json:"failback_delay,omitempty"`

	// ConfirmWith is a path. When set, an instance whose heartbeats stop is
	// probed at its url + this path before it is marked stale; if it
	// answers 2xx it stays routed (its NATS link is down, not the
	// instance) and a warning is logged and counted. The probe runs off the
	// request path, with a 1s timeout.
	ConfirmWith string `json:"confirm_with,omitempty"`

	service *Service
	window  uint64
}

// PriorityRange bounds announced priorities, both ends included.
type PriorityRange struct {
	Min int `json:"min"`
	Max int `json:"max"`
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.cx",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision joins (or creates) the service of the subject prefix; its
// settings take effect when the cx app starts (see servicePool).
func (u *Upstreams) Provision(ctx caddy.Context) error {
	cfg, err := u.config()
	if err != nil {
		return err
	}
	appIface, err := ctx.App("cx")
	if err != nil {
		return fmt.Errorf("loading cx app: %v", err)
	}
	failTimeout := time.Duration(u.FailTimeout)
	if failTimeout == 0 {
		failTimeout = DefaultFailTimeout
	}
	svc, err := appIface.(*App).Service(serviceSettings{membership: cfg, failTimeout: failTimeout, confirmWith: u.ConfirmWith,
		failbackDelay: time.Duration(u.FailbackDelay), shareFailuresOff: u.ShareFailures != nil && !*u.ShareFailures})
	if err != nil {
		return err
	}
	u.service = svc
	if len(u.AllowNetworks) == 0 && !appIface.(*App).loopbackOnly() {
		ctx.Logger().Warn("allow_networks is not set: whoever can publish on NATS can point this gateway's traffic at any host; set allow_networks to the instances' networks",
			zap.String("subject_prefix", cfg.Prefix))
	}
	return registerMetrics(ctx, svc)
}

// config checks the settings (Validate) and maps them onto the
// membership configuration.
func (u *Upstreams) config() (membership.Config, error) {
	if err := u.Validate(); err != nil {
		return membership.Config{}, err
	}
	cfg := membership.Config{
		Prefix:       u.SubjectPrefix,
		StaleAfter:   time.Duration(u.StaleAfter),
		ForgetAfter:  time.Duration(u.ForgetAfter),
		MaxInstances: u.MaxInstances,
		Priority:     u.Priority,
		Rise:         u.Rise,
		RebuildEvery: RebuildEvery,
		FlapLimit:    u.FlapLimit,
		FlapWindow:   time.Duration(u.FlapWindow),
		FlapHold:     time.Duration(u.FlapHold),
		AllowIDs:     u.AllowIDs,
		ClockSkew:    time.Duration(u.ClockSkew),
		Scheme:       u.Scheme,
		// the confirm_with probe is the service's (registryConfig): it
		// dials through the service's guard.
		ConsistentVersions: u.Versions == "consistent",
	}
	if cfg.Prefix == "" {
		cfg.Prefix = heartbeat.DefaultPrefix
	}
	for _, s := range u.AllowNetworks {
		cfg.AllowNetworks = append(cfg.AllowNetworks, netip.MustParsePrefix(s).Masked()) // checked by Validate
	}
	if r := u.PriorityRange; r != nil {
		cfg.PriorityRange = &membership.PriorityRange{Min: r.Min, Max: r.Max}
	}
	return cfg, nil
}

// GetUpstreams returns the active instances, best priority first, at most
// MaxCandidates of them, and records them as the pool of this try in the
// request's state (request.go). It reads an immutable snapshot: no locks.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	st := requestOf(r)
	c := u.poolOf(u.service.warmSnapshot(r.Context()), time.Now(), st)
	st.setPool(c)
	return c.ups, nil
}

// poolOf makes the pool of one try of st from snap, as the clock reads now.
func (u *Upstreams) poolOf(snap *membership.Snapshot, now time.Time, st *proxyRequest) candidatePool {
	routes, tiers := candidates(snap, atomic.AddUint64(&u.window, 1))
	if u.FailbackDelay > 0 {
		routes, tiers = delayFailback(routes, tiers, now, time.Duration(u.FailbackDelay))
	}
	ups := st.upstreamsFor(routes)
	for i := range routes {
		ups[i].Dial = routes[i].Dial
	}
	return candidatePool{svc: u.service, routes: routes, ups: ups, tiers: tiers, now: now,
		header: u.HeaderInstance, slowStart: time.Duration(u.SlowStart)}
}

// candidates picks at most MaxCandidates routes: whole tiers while they
// fit, then a window of the next tier that rotates with turn. tiers holds
// the end index of each tier within the result.
func candidates(snap *membership.Snapshot, turn uint64) ([]membership.Route, []int) {
	if len(snap.Routes) <= MaxCandidates {
		return snap.Routes, snap.Tiers
	}
	routes := make([]membership.Route, 0, MaxCandidates)
	var tiers []int
	for i := range snap.Tiers {
		tier := snap.Tier(i)
		room := MaxCandidates - len(routes)
		if len(tier) <= room {
			routes = append(routes, tier...)
		} else {
			start := int(turn % uint64(len(tier)))
			for j := 0; j < room; j++ {
				routes = append(routes, tier[(start+j)%len(tier)])
			}
		}
		tiers = append(tiers, len(routes))
		if len(routes) == MaxCandidates {
			break
		}
	}
	return routes, tiers
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
)
