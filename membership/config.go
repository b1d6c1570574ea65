package membership

import (
	"fmt"
	"net/netip"
	"path"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Defaults for Config's zero values.
const (
	DefaultForgetAfter  = 5 * time.Minute
	DefaultMaxInstances = 10000
	StaleFactor         = 3
)

// Config tunes a Registry. The zero value is usable.
type Config struct {
	// Prefix is the subject prefix heartbeats arrive under.
	Prefix string
	// StaleAfter is the silence after which a member turns stale; zero
	// means StaleFactor times the member's own interval.
	StaleAfter time.Duration
	// ForgetAfter is how long stale and left members stay listed.
	ForgetAfter time.Duration
	// MaxInstances bounds the members kept; heartbeats of further ids are
	// rejected (after evicting the oldest stale or left member, if any).
	MaxInstances int
	// AllowNetworks, when not empty, restricts instance urls whose host is
	// an IP literal to these networks. DNS names are admitted: the
	// gateway checks the resolved address when dialing.
	AllowNetworks []netip.Prefix
	// AllowIDs, when not empty, admits only instance ids matching one of
	// these globs (path.Match syntax: *, ?, [a-z]); heartbeats of other ids
	// are rejected (reason "id") and never stored.
	AllowIDs []string
	// PriorityRange, if set, clamps announced priorities into Min..Max, so
	// that an unexpected publisher cannot make itself primary. Overrides
	// in Priority are operator config and are not clamped.
	PriorityRange *PriorityRange
	// ClockSkew is how far ahead of the gateway's clock a started_at may
	// be; later ones are rejected (reason "clock"). Default 1m.
	ClockSkew time.Duration
	// Scheme is the scheme of the urls admitted: "http" (default) or
	// "https". Urls of the other scheme are rejected (reason "scheme"), so
	// that nothing is ever downgraded or sent in clear.
	Scheme string
	// Priority overrides the announced priority of the ids it names.
	Priority map[string]int
	// OnEvent, if set, is told of every change, outside the registry's lock.
	OnEvent func(Event)

	// Rise is how many consecutive ready heartbeats a new, returning or
	// restarted instance needs before it is routed. Default 1.
	Rise int
	// FlapLimit, when positive, holds out of routing an instance that left
	// active state more than FlapLimit times within FlapWindow, for
	// FlapHold, doubling with each further hold up to MaxFlapHold.
	FlapLimit  int
	FlapWindow time.Duration
	FlapHold   time.Duration
	// ConsistentVersions routes new requests to instances of one version
	// only, switching to a newer version in one step once it has at least
	// as many active instances as the one served (or that one is gone).
	ConsistentVersions bool
	// RebuildEvery, when positive, coalesces snapshot rebuilds: after a
	// rebuild that took c, the next one waits until 10 x c has passed (at
	// most RebuildEvery), folding the changes in between into one. Rebuilds
	// then cost at most about a tenth of a core whatever the fleet's size
	// (10,000 instances answering a discover), while a small fleet's
	// rebuilds (microseconds) stay practically immediate.
	RebuildEvery time.Duration
	// AwaitControls keeps the snapshot empty until SetControls is first
	// called, so that a gateway starting up never routes to an instance
	// an operator put into maintenance before it knew.
	AwaitControls bool
	// Deny, if set, may refuse an instance url: a non-empty answer is the
	// reason (e.g. it points at the gateway's own listener, a loop).
	Deny func(url string) string
	// Confirm, if set, is asked before a silent member is marked stale:
	// true means its url still answers (its NATS link is down, not the
	// instance), and it stays routed. It is called off the request path,
	// in its own goroutine, and must return within about a second.
	Confirm func(url string) bool
}

// PriorityRange bounds announced priorities (both ends included).
type PriorityRange struct {
	Min, Max int
}

// DefaultClockSkew is Config.ClockSkew's default.
const DefaultClockSkew = time.Minute

// Defaults of the damping options.
const (
	DefaultFlapWindow = time.Minute
	DefaultFlapHold   = 10 * time.Second
	MaxFlapHold       = 5 * time.Minute
)

func (c *Config) setDampingDefaults() error {
	if c.Rise < 0 || c.FlapLimit < 0 || c.FlapWindow < 0 || c.FlapHold < 0 {
		return fmt.Errorf("rise, flap_limit, flap_window and flap_hold must not be negative")
	}
	if c.Rise == 0 {
		c.Rise = 1
	}
	if c.FlapWindow == 0 {
		c.FlapWindow = DefaultFlapWindow
	}
	if c.FlapHold == 0 {
		c.FlapHold = DefaultFlapHold
	}
	return nil
}

// Validate reports what New and Reconfigure would refuse in c.
func (c Config) Validate() error { return c.setDefaults() }

func (c *Config) setDefaults() error {
	if c.Prefix == "" {
		c.Prefix = heartbeat.DefaultPrefix
	}
	if err := c.setDampingDefaults(); err != nil {
		return err
	}
	if err := heartbeat.ValidPrefix(c.Prefix); err != nil {
		return err
	}
	if c.StaleAfter < 0 {
		return fmt.Errorf("stale_after must not be negative")
	}
	if c.ForgetAfter < 0 {
		return fmt.Errorf("forget_after must not be negative")
	}
	if c.ForgetAfter == 0 {
		c.ForgetAfter = DefaultForgetAfter
	}
	if c.MaxInstances < 0 {
		return fmt.Errorf("max_instances must not be negative")
	}
	if c.MaxInstances == 0 {
		c.MaxInstances = DefaultMaxInstances
	}
	if len(c.AllowNetworks) > 0 {
		nets := make([]netip.Prefix, len(c.AllowNetworks))
		for i, n := range c.AllowNetworks {
			if !n.IsValid() {
				return fmt.Errorf("allow_networks: invalid network %v", n)
			}
			nets[i] = UnmapPrefix(n)
		}
		c.AllowNetworks = nets
	}
	if err := c.setTrustDefaults(); err != nil {
		return err
	}
	for id, p := range c.Priority {
		if !heartbeat.ValidID(id) {
			return fmt.Errorf("priority override: %q is not a valid instance id", id)
		}
		if p < heartbeat.MinPriority || p > heartbeat.MaxPriority {
			return fmt.Errorf("priority override for %s: %d is outside %d to %d", id, p, heartbeat.MinPriority, heartbeat.MaxPriority)
		}
	}
	return nil
}

// setTrustDefaults checks and defaults the options that decide who may be
// routed: ids, priorities, clocks and schemes.
func (c *Config) setTrustDefaults() error {
	for _, g := range c.AllowIDs {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			return fmt.Errorf("allow_ids: %q is not a valid glob (path.Match syntax, like app-* or worker[0-9])", g)
		}
	}
	if r := c.PriorityRange; r != nil {
		if r.Min > r.Max {
			return fmt.Errorf("priority_range: min %d is greater than max %d", r.Min, r.Max)
		}
		if r.Min < heartbeat.MinPriority || r.Max > heartbeat.MaxPriority {
			return fmt.Errorf("priority_range: %d to %d is outside %d to %d", r.Min, r.Max, heartbeat.MinPriority, heartbeat.MaxPriority)
		}
	}
	if c.ClockSkew < 0 {
		return fmt.Errorf("clock_skew must not be negative")
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	switch c.Scheme {
	case "":
		c.Scheme = "http"
	case "http", "https":
	default:
		return fmt.Errorf("scheme %q: allowed are http (the default) and https", c.Scheme)
	}
	return nil
}

// UnmapPrefix turns an IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) into
// its IPv4 form, since urls' addresses are unmapped before the check.
func UnmapPrefix(n netip.Prefix) netip.Prefix {
	if a := n.Addr(); a.Is4In6() && n.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), n.Bits()-96).Masked()
	}
	return n
}

func (c *Config) allowed(rawURL string) bool {
	if len(c.AllowNetworks) == 0 {
		return true
	}
	ip, ok := heartbeat.IPHost(rawURL)
	if !ok {
		return true // a DNS name: checked on the resolved address when dialing
	}
	return InNetworks(c.AllowNetworks, ip)
}

// InNetworks reports whether ip (IPv4-mapped or not) is inside one of
// nets, which UnmapPrefix has unmapped.
func InNetworks(nets []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

func (c *Config) staleAfter(interval time.Duration) time.Duration {
	if c.StaleAfter > 0 {
		return c.StaleAfter
	}
	return StaleFactor * interval
}
