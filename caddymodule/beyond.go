package caddymodule

import (
	"net/http"
	"strings"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// configureBeyond maps the options no load balancer without heartbeats can
// offer (versions, confirm_with) onto the membership configuration;
// Validate has checked them.
func (u *Upstreams) configureBeyond(cfg *membership.Config) {
	cfg.ConsistentVersions = u.Versions == "consistent"
	if u.ConfirmWith != "" {
		cfg.Confirm = confirmProbe(u.ConfirmWith, defaultPolicy)
	}
}

// ConfirmTimeout bounds one confirmation probe.
const ConfirmTimeout = time.Second

// confirmProbe returns a probe that GETs an instance's url + path and
// reports whether it answered 2xx. It dials through the same guard as
// proxied requests (policy: allow_networks, the gateway's own listeners)
// and follows no redirect: a 3xx, which could point anywhere, is not a
// confirmation.
func confirmProbe(path string, policy func() dialPolicy) func(url string) bool {
	client := &http.Client{
		Timeout: ConfirmTimeout,
		Transport: &http.Transport{
			DialContext:       guardedDialer(policy, ConfirmTimeout).DialContext,
			DisableKeepAlives: true, // probes are rare; keep no connection to a silent instance
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return func(url string) bool {
		resp, err := client.Get(strings.TrimSuffix(url, "/") + path)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 300
	}
}

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
