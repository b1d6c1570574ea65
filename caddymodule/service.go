package caddymodule

import (
	"encoding/json"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// servicePool holds the membership of each (connection, prefix, settings),
// so that a reload keeps what the gateway knows instead of starting blind.
var servicePool = caddy.NewUsagePool()

// Service is the membership of one subject prefix: a registry fed by a
// watcher on the shared NATS connection.
type Service struct {
	key      string
	prefix   string
	reg      *membership.Registry
	log      *eventLog
	health   *passiveHealth
	inflight inflight
	// stats are the counters exported as metrics (metrics.go); link is
	// the NATS connection the service listens on (for its status).
	stats *serviceStats
	link  *natsLink

	mu      sync.Mutex
	watcher *membership.Watcher
	// warmUntil is the end of the start-up window in which a request that
	// finds no instance waits for the first heartbeats (unix nanoseconds).
	warmUntil atomic.Int64
	// loops refuses instance urls pointing at the gateway's listeners.
	loops atomic.Pointer[loopGuard]
	// allow is allow_networks, which every dial to an instance is checked
	// against (dialguard.go); refusals counts the dials refused.
	allow    []netip.Prefix
	refusals *dialRefusals
	// failback is failback_delay, for deriving the primary (primary.go).
	failback failbackSetting
}

type serviceKey struct {
	Link          string
	Prefix        string
	StaleAfter    time.Duration
	ForgetAfter   time.Duration
	MaxInstances  int
	AllowNetworks []string
	Priority      map[string]int
	FailTimeout   time.Duration
	Rise          int
	FlapLimit     int
	FlapWindow    time.Duration
	FlapHold      time.Duration
	Consistent    bool
	ConfirmWith   string
	AllowIDs      []string
	PriorityRange *membership.PriorityRange
	ClockSkew     time.Duration
	Scheme        string
}

// serviceOptions are the settings of a service that live outside the
// membership registry.
type serviceOptions struct {
	failTimeout time.Duration
	confirmWith string // the path behind cfg.Confirm, for the pool key
}

func keyOf(link string, cfg membership.Config, opts serviceOptions) string {
	k := serviceKey{Link: link, Prefix: cfg.Prefix, StaleAfter: cfg.StaleAfter, ForgetAfter: cfg.ForgetAfter,
		MaxInstances: cfg.MaxInstances, Priority: cfg.Priority, FailTimeout: opts.failTimeout,
		Rise: cfg.Rise, FlapLimit: cfg.FlapLimit, FlapWindow: cfg.FlapWindow, FlapHold: cfg.FlapHold,
		Consistent: cfg.ConsistentVersions, ConfirmWith: opts.confirmWith,
		AllowIDs: cfg.AllowIDs, PriorityRange: cfg.PriorityRange, ClockSkew: cfg.ClockSkew, Scheme: cfg.Scheme}
	for _, n := range cfg.AllowNetworks {
		k.AllowNetworks = append(k.AllowNetworks, n.String())
	}
	b, _ := json.Marshal(k)
	return string(b)
}

func acquireService(link string, cfg membership.Config, opts serviceOptions, logger *zap.Logger) (*Service, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = heartbeat.DefaultPrefix
	}
	key := keyOf(link, cfg, opts)
	val, loaded, err := servicePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		s := &Service{key: key, prefix: cfg.Prefix, log: newEventLog(logger.With(zap.String("service", cfg.Prefix))),
			health: &passiveHealth{timeout: opts.failTimeout}}
		cfg.OnEvent = s.onEvent
		cfg.Deny = func(url string) string { return s.loops.Load().deny(url) }
		s.allow = unmapNetworks(cfg.AllowNetworks)
		s.refusals = newDialRefusals(s.log.logger)
		if cfg.Confirm != nil {
			cfg.Confirm = confirmProbe(opts.confirmWith, s.dialPolicy)
		}
		reg, err := membership.New(cfg)
		if err != nil {
			return nil, err
		}
		s.reg = reg
		s.stats = acquireStats(cfg.Prefix)
		s.refusals.count = &s.stats.dialRefused
		s.link = linkByKey(link)
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	s := val.(*Service)
	if !loaded {
		s.inherit(link)
	}
	return s, nil
}

// inherit seeds a new registry (settings changed in a reload) with the
// members another service of the same prefix knows, re-checked against
// the new settings, so that routing does not wait for the next heartbeats.
func (s *Service) inherit(link string) {
	servicePool.Range(func(_, val any) bool {
		other, ok := val.(*Service)
		if !ok || other.prefix != s.prefix || other.key == s.key {
			return true
		}
		var k serviceKey
		if json.Unmarshal([]byte(other.key), &k) != nil || k.Link != link {
			return true
		}
		now := time.Now()
		for _, m := range other.reg.Members() {
			if m.State == membership.StateActive || m.State == membership.StateDraining {
				s.reg.Apply(messageOf(m), now)
			}
		}
		return false
	})
}

func messageOf(m membership.Member) *heartbeat.Message {
	state := heartbeat.StateReady
	if m.State == membership.StateDraining {
		state = heartbeat.StateDraining
	}
	return &heartbeat.Message{Proto: heartbeat.Proto, ID: m.ID, URL: m.URL, State: state,
		StartedAt: m.StartedAt, Seq: m.Seq, IntervalMS: int(m.Interval / time.Millisecond),
		Version: m.Version, Priority: m.AnnouncedPriority, LeaderRoles: m.LeaderRoles, Meta: m.Meta}
}

func (s *Service) onEvent(ev membership.Event) {
	switch ev.Kind {
	case membership.EventJoin, membership.EventRestart, membership.EventReady:
		// a new process, or one that proved alive again, starts clean.
		s.health.clear(heartbeat.HostPort(ev.URL))
	case membership.EventStale:
		s.inflight.cancelAll(ev.ID, errInstanceStale)
	}
	s.observe(ev)
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
	return nil
}

// Prefix is the subject prefix of this service.
func (s *Service) Prefix() string { return s.prefix }

// Registry is the membership registry of this service.
func (s *Service) Registry() *membership.Registry { return s.reg }

// Destruct stops watching when no config uses the service any more.
func (s *Service) Destruct() error {
	s.mu.Lock()
	w := s.watcher
	s.watcher = nil
	s.mu.Unlock()
	if w != nil {
		w.Stop()
	}
	// Late events of the abandoned registry (a pending rebuild, a probe,
	// a heartbeat still being handled) must not reach the metrics of the
	// service that replaced it.
	s.reg.Close()
	s.releaseStats()
	return nil
}
