package caddymodule

import (
	"fmt"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

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

	// AllowNetworks restricts where announced urls may point: only IP
	// literals inside these CIDR networks are accepted. Default: any.
	AllowNetworks []string `json:"allow_networks,omitempty"`

	// Priority overrides the priority instances announce, by instance id
	// (lower is preferred).
	Priority map[string]int `json:"priority,omitempty"`

	// FailTimeout is how long an instance that failed a request (a
	// connection error; 502, 503, 504 or a timeout of an idempotent
	// request) is passed over while others are available, as nginx's
	// fail_timeout. A restart or a return from stale clears it. Default: 10s.
	FailTimeout caddy.Duration `json:"fail_timeout,omitempty"`

	// MaxInstances bounds how many instances are tracked; heartbeats of
	// further ids are rejected and counted. Default: 10000.
	MaxInstances int `json:"max_instances,omitempty"`

	// HeaderInstance, if set, is a response header the `cx` transport adds
	// to every proxied response, naming the instance that served it (for
	// debugging load balancers). Off by default; the Caddyfile option
	// `header_instance` without a name uses X-Cx-Instance.
	HeaderInstance string `json:"header_instance,omitempty"`

	service *Service
	window  uint64
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.cx",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision joins (or creates) the membership of the subject prefix.
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
	svc, err := appIface.(*App).Service(cfg, failTimeout)
	if err != nil {
		return err
	}
	u.service = svc
	if u.HeaderInstance != "" && !validHeaderName(u.HeaderInstance) {
		return fmt.Errorf("cx: header_instance %q is not a valid header name (letters, digits and - only, like X-Cx-Instance)", u.HeaderInstance)
	}
	return registerMetrics(ctx, svc)
}

func (u *Upstreams) config() (membership.Config, error) {
	cfg := membership.Config{
		Prefix:       u.SubjectPrefix,
		StaleAfter:   time.Duration(u.StaleAfter),
		ForgetAfter:  time.Duration(u.ForgetAfter),
		MaxInstances: u.MaxInstances,
		Priority:     u.Priority,
	}
	if cfg.Prefix == "" {
		cfg.Prefix = heartbeat.DefaultPrefix
	}
	if err := heartbeat.ValidPrefix(cfg.Prefix); err != nil {
		return cfg, fmt.Errorf("cx: subject_prefix: %v", err)
	}
	if u.MaxInstances < 0 || u.StaleAfter < 0 || u.ForgetAfter < 0 || u.FailTimeout < 0 {
		return cfg, fmt.Errorf("cx: max_instances, stale_after, forget_after and fail_timeout must not be negative")
	}
	for _, s := range u.AllowNetworks {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("cx: allow_networks: %q is not a CIDR network like 10.0.0.0/8: %v", s, err)
		}
		cfg.AllowNetworks = append(cfg.AllowNetworks, p.Masked())
	}
	return cfg, nil
}

// GetUpstreams returns the active instances, best priority first, at most
// MaxCandidates of them. It reads an immutable snapshot: no locks.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	snap := u.service.reg.Snapshot()
	routes, tiers := candidates(snap, atomic.AddUint64(&u.window, 1))
	ups := make([]*reverseproxy.Upstream, len(routes))
	for i := range routes {
		ups[i] = &reverseproxy.Upstream{Dial: routes[i].Dial}
	}
	caddyhttp.SetVar(r.Context(), varCandidates, &candidateInfo{tiers: tiers, svc: u.service, routes: routes, header: u.HeaderInstance})
	return ups, nil
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
