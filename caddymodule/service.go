package caddymodule

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// servicePool holds one Service per (NATS link, subject prefix), so that
// a reload keeps what the gateway knows instead of starting blind.
//
// The reload path: the new config's Upstreams.Provision takes the live
// service from the pool and adds its claim (its settings and logger);
// the settings are checked then, but applied only when the new config's
// cx app starts (Registry.Reconfigure: members kept, those the new rules
// refuse dropped), so that a config that fails to load changes nothing.
// The old config's Cleanup then drops its claim and its hold on the pool.
// Should the new config fail after it started, its Cleanup puts the
// settings of the config still running back.
var servicePool = caddy.NewUsagePool()

// serviceKey identifies a service. Settings are not part of it: a reload
// that changes them reconfigures the live service.
type serviceKey struct {
	link   *natsLink
	prefix string
}

// serviceBirths orders services of one prefix, newest last: while a
// reload changes the NATS connection, the old and the new one overlap.
var serviceBirths atomic.Uint64

// Service is the membership of one subject prefix: a registry fed by a
// watcher on the shared NATS connection, and its counters.
type Service struct {
	prefix string
	link   *natsLink
	born   uint64
	reg    *membership.Registry
	// logger writes to the log of the config whose settings are applied.
	logger   *followingLogger
	log      *eventLog
	health   *passiveHealth
	inflight inflight
	// stats are the counters exported as metrics (metrics.go); they live
	// as long as the service, across reloads.
	stats *serviceStats

	mu      sync.Mutex
	watcher *membership.Watcher
	// claims are the loaded configs that use the service, oldest first;
	// applied is the one whose settings the registry runs with.
	claims  []*claim
	applied *claim

	// warmUntil is the end of the start-up window in which a request that
	// finds no instance waits for the first heartbeats (unix nanoseconds).
	warmUntil atomic.Int64
	// loops refuses instance urls pointing at the gateway's listeners.
	loops atomic.Pointer[loopGuard]
	// allow is allow_networks, which every dial to an instance is checked
	// against (dialguard.go); refusals counts the dials refused.
	allow    atomic.Pointer[[]netip.Prefix]
	refusals *dialRefusals
	// failback is failback_delay, for deriving the primary (primary.go).
	failback failbackSetting
	// fleet is what the service shares with the other gateways of its
	// prefix (fleet.go): gateway heartbeats and failure observations.
	fleet *fleetState
	// control follows the operators' holds in the control bucket
	// (control.go).
	control atomic.Pointer[controlState]
}

// claim is one config's use of a service.
type claim struct {
	owner    *App
	settings serviceSettings
	logger   *zap.Logger
}

// acquireService returns the service of c's prefix on link, creating it
// with c's settings if none runs, and records c's claim on it.
func acquireService(link *natsLink, c *claim) (*Service, error) {
	if c.settings.membership.Prefix == "" {
		c.settings.membership.Prefix = heartbeat.DefaultPrefix
	}
	key := serviceKey{link: link, prefix: c.settings.membership.Prefix}
	val, _, err := servicePool.LoadOrNew(key, func() (caddy.Destructor, error) { return newService(link, c) })
	if err != nil {
		return nil, err
	}
	s := val.(*Service)
	s.mu.Lock()
	s.claims = append(s.claims, c)
	s.mu.Unlock()
	return s, nil
}

func newService(link *natsLink, c *claim) (*Service, error) {
	prefix := c.settings.membership.Prefix
	s := &Service{prefix: prefix, link: link, born: serviceBirths.Add(1), applied: c, stats: &serviceStats{},
		logger: newFollowingLogger(c.logger), health: &passiveHealth{}}
	logger := s.logger.With(zap.String("service", prefix))
	s.log = newEventLog(logger)
	// Caddy may start the http app before the cx app: requests that come
	// before the service starts wait for it, as in the start-up window.
	s.warmUntil.Store(time.Now().Add(WarmUp).UnixNano())
	s.refusals = newDialRefusals(logger)
	s.refusals.count = &s.stats.dialRefused
	reg, err := membership.New(s.registryConfig(c.settings))
	if err != nil {
		return nil, err
	}
	s.reg = reg
	s.configure(c.settings)
	return s, nil
}

func (s *Service) key() serviceKey { return serviceKey{link: s.link, prefix: s.prefix} }

// registryConfig is set's membership configuration with the service's
// hooks: events, the loop guard, the confirmation probe.
func (s *Service) registryConfig(set serviceSettings) membership.Config {
	cfg := set.membership
	cfg.OnEvent = s.onEvent
	cfg.AwaitControls = true // released by the control follower (control.go)
	cfg.Deny = func(url string) string { return s.loops.Load().deny(url) }
	cfg.Confirm = nil
	if set.confirmWith != "" {
		cfg.Confirm = confirmProbe(set.confirmWith, s.dialPolicy)
	}
	return cfg
}

// configure applies the settings that live outside the registry.
func (s *Service) configure(set serviceSettings) {
	s.health.timeout.Store(int64(set.failTimeout))
	s.failback.set(set.failbackDelay)
	nets := unmapNetworks(set.membership.AllowNetworks)
	s.allow.Store(&nets)
}

// allowNetworks is allow_networks as the dial guard checks it.
func (s *Service) allowNetworks() []netip.Prefix {
	if p := s.allow.Load(); p != nil {
		return *p
	}
	return nil
}

// use makes the registry run with c's settings and log to c's logger:
// c's config is starting.
func (s *Service) use(c *claim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apply(c)
}

// apply reconfigures the live registry to c; s.mu must be held.
func (s *Service) apply(c *claim) error {
	s.logger.follow(c.logger)
	if s.applied != nil && len(s.applied.settings.differences(c.settings)) == 0 {
		s.applied = c
		return nil
	}
	if err := s.reg.Reconfigure(s.registryConfig(c.settings)); err != nil {
		return err
	}
	s.configure(c.settings)
	s.applied = c
	return nil
}

// release drops c's claim and the pool's hold for it. If the registry ran
// with c while an older config still uses the service (the config of c
// failed after it started), the latest remaining settings come back.
func (s *Service) release(c *claim) {
	s.mu.Lock()
	s.claims = slices.DeleteFunc(s.claims, func(have *claim) bool { return have == c })
	if s.applied == c && len(s.claims) > 0 {
		if err := s.apply(s.claims[len(s.claims)-1]); err != nil {
			s.log.logger.Error("restoring the settings of the running config", zap.Error(err))
		}
	}
	s.mu.Unlock()
	_, _ = servicePool.Delete(s.key())
}

// claimOf returns owner's claim on s.
func (s *Service) claimOf(owner *App) *claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.claims {
		if c.owner == owner {
			return c
		}
	}
	return nil
}

func (s *Service) onEvent(ev membership.Event) {
	switch ev.Kind {
	case membership.EventJoin, membership.EventRestart, membership.EventReady:
		// a new process, or one that proved alive again, starts clean.
		s.health.clear(heartbeat.HostPort(ev.URL))
	case membership.EventStale:
		s.inflight.cancelAll(ev.ID, errInstanceStale)
	}
	s.countEvent(ev)
	s.log.event(ev)
}

// start begins watching on nc; a started service stays started.
func (s *Service) start(nc *nats.Conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watcher != nil {
		return nil
	}
	w := membership.NewWatcher(nc, s.reg)
	w.OnError = func(err error) { s.log.logger.Warn("publishing discover", zap.Error(err)) }
	if err := w.Start(); err != nil {
		return err
	}
	s.watcher = w
	s.warmUntil.Store(time.Now().Add(WarmUp).UnixNano())
	// control first: the fleet's heartbeats say whether it follows
	s.startControl(nc)
	s.startFleet(nc)
	return nil
}

// Destruct stops watching when no config uses the service any more.
func (s *Service) Destruct() error {
	s.mu.Lock()
	w := s.watcher
	s.watcher = nil
	s.mu.Unlock()
	if w != nil {
		s.stopControl()
		s.stopFleet()
		w.Stop()
	}
	// Late events (a pending rebuild, a probe, a heartbeat still being
	// handled) must not be logged or counted by a service that is gone.
	s.reg.Close()
	return nil
}

// runningServices returns one Service per subject prefix, by prefix, from
// the usage pool: admin routes and handlers are provisioned apart from
// the cx app, and the pool holds exactly the services that a loaded config
// uses. While a reload changes the NATS connection, the newer service of
// a prefix is the one reported.
func runningServices() []*Service {
	newest := map[string]*Service{}
	servicePool.Range(func(_, val any) bool {
		if s, ok := val.(*Service); ok && (newest[s.prefix] == nil || newest[s.prefix].born < s.born) {
			newest[s.prefix] = s
		}
		return true
	})
	out := make([]*Service, 0, len(newest))
	for _, s := range newest {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *Service) int { return strings.Compare(a.prefix, b.prefix) })
	return out
}

// Interface guard: the usage pool destroys a service no config uses.
var _ caddy.Destructor = (*Service)(nil)
