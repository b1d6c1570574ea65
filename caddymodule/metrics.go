package caddymodule

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-cx/caddy-cx/membership"
)

// Metrics of caddy-cx, all on Caddy's metrics endpoint (the admin API's
// /metrics or the `metrics` handler). docs/METRICS.md lists them.
//
// Lifetimes: a Service outlives a config (usage pool), while Caddy's
// metrics registry is made anew for every config. So the numbers live in
// the Service (serviceStats), one per subject prefix (the `service`
// label), which a reload reconfigures in place; and every config
// registers one metricsCollector in its own registry that reads them, and
// the registries, at scrape time. Nothing is registered twice, no counter
// restarts on reload, and heartbeats cost no metric work.

const metricsNamespace = "caddy_cx_"

var (
	descInstances = prometheus.NewDesc(metricsNamespace+"instances",
		"Known instances by state (active, draining, stale, left).", []string{"service", "state"}, nil)
	descHeartbeatAge = prometheus.NewDesc(metricsNamespace+"heartbeat_age_seconds",
		"Seconds since the instance's last accepted heartbeat, by the gateway's clock.", []string{"service", "instance_id"}, nil)
	descPrimary = prometheus.NewDesc(metricsNamespace+"primary",
		"1 for the instance(s) that take new requests now under the failover policy (best priority tier, not failing), 0 for other known instances.",
		[]string{"service", "instance_id"}, nil)
	descEvents = prometheus.NewDesc(metricsNamespace+"membership_events_total",
		"Membership changes, by event: join, leave, stale, restart, conflict, draining, ready, forget, flapping, version_switch, role_conflict, role_resolved, alive_unheard, priority_clamped. Rejected heartbeats are counted by caddy_cx_heartbeats_rejected_total.",
		[]string{"service", "event"}, nil)
	descRejected = prometheus.NewDesc(metricsNamespace+"heartbeats_rejected_total",
		"Heartbeats refused, by reason: the offending field (subject, payload, json, proto, id, url, state, started_at, seq, interval_ms, priority, version, leader_roles, meta; invalid when none is named), a rule (id: outside allow_ids, clock, scheme, network, loop, rate, capacity), or dropped (unread: the gateway fell behind).",
		[]string{"service", "reason"}, nil)
	descRequests = prometheus.NewDesc(metricsNamespace+"upstream_requests_total",
		"Tries of requests at an instance, by outcome: 1xx to 5xx, or error (no response: connection error, timeout, cancelled).",
		[]string{"service", "instance_id", "code_class"}, nil)
	descRetries = prometheus.NewDesc(metricsNamespace+"retries_total",
		"Requests retried on another instance, by how the previous try ended: dial_error, stale (the instance went silent), transport_error, status_5xx, other (a custom lb_retry_match), unknown (dynamic cx without the cx transport).",
		[]string{"service", "reason"}, nil)
	descDialRefused = prometheus.NewDesc(metricsNamespace+"dial_refused_total",
		"Connections to instances refused when dialing, by reason: loop (the peer is one of the gateway's own listeners, or unspecified) or network (outside allow_networks; link-local or cloud metadata when allow_networks is unset).",
		[]string{"service", "reason"}, nil)
	descFailovers = prometheus.NewDesc(metricsNamespace+"failovers_total",
		"Times the primary moved to other instances (none of the previous primary instances is primary any more).", []string{"service"}, nil)
	descNATSConnected = prometheus.NewDesc(metricsNamespace+"nats_connected",
		"1 while the gateway is connected to NATS, else 0.", nil, nil)
	descNATSReconnects = prometheus.NewDesc(metricsNamespace+"nats_reconnects_total",
		"Times the gateway's NATS connection came back after being lost.", nil, nil)
	descRoleConflict = prometheus.NewDesc(metricsNamespace+"leader_role_conflict_since_timestamp_seconds",
		"Unix time since which a leader role is claimed by more than one active instance (split brain); absent when none is.",
		[]string{"service", "role"}, nil)
	descServedVersion = prometheus.NewDesc(metricsNamespace+"served_version_info",
		"The version routed with `versions consistent`, in the version label; always 1.", []string{"service", "version"}, nil)

	descGateways = prometheus.NewDesc(metricsNamespace+"gateways",
		"Gateways of the service's fleet (this one included), by state (active, stale, left).", []string{"service", "state"}, nil)
	descFleetMessages = prometheus.NewDesc(metricsNamespace+"fleet_messages_total",
		"Messages of other gateways (and this one's echo) received, by kind (heartbeat, observation) and result: accepted; rejected (invalid, refused by a rule such as clock, rate, capacity or an id conflict, or dropped unread as a slow consumer); ignored (a heartbeat older than one applied; an observation from a publisher that is not a live announced gateway, beyond its rate, or with share_failures off).",
		[]string{"service", "kind", "result"}, nil)
	descSplitView = prometheus.NewDesc(metricsNamespace+"fleet_split_view",
		"1 while the live gateways of the service have disagreed on the primary for longer than 2s, else 0.", []string{"service"}, nil)
	descObservationsApplied = prometheus.NewDesc(metricsNamespace+"observations_applied_total",
		"Instance failures observed by other gateways and applied here (the instance passed over for fail_timeout).", []string{"service"}, nil)

	allDescs = []*prometheus.Desc{descInstances, descHeartbeatAge, descPrimary, descEvents, descRejected,
		descRequests, descRetries, descDialRefused, descFailovers, descNATSConnected, descNATSReconnects, descRoleConflict, descServedVersion,
		descGateways, descFleetMessages, descSplitView, descObservationsApplied}
)

// contractEvents are always exported, at 0 until they happen, so that
// increase() and alerts see the first one. Rejections are not among them:
// heartbeats_rejected_total counts those (one counter per fact).
var contractEvents = []membership.EventKind{membership.EventJoin, membership.EventLeave, membership.EventStale,
	membership.EventRestart, membership.EventConflict, membership.EventDraining, membership.EventReady,
	membership.EventForget, membership.EventFlapping, membership.EventVersionSwitch, membership.EventRoleConflict,
	membership.EventRoleResolved, membership.EventAliveUnheard, membership.EventPriorityClamped}

// rejectionReasons are always exported, at 0 until a heartbeat is refused:
// the fields heartbeat.Decode names, membership's rules and limits, the
// watcher's dropped messages, and invalid (an error naming no field).
var rejectionReasons = []string{"subject", "payload", "json", "proto", "id", "url", "state", "started_at", "seq",
	"interval_ms", "priority", "version", "leader_roles", "meta", "clock", "scheme", "network", "loop",
	"rate", "capacity", "dropped", "invalid"}

// retryReasons are always exported, at 0 until a request is retried.
var retryReasons = []string{outcomeDial, outcomeStale, outcomeError, outcomeStatus5x, "other", "unknown"}

// dialRefusalReasons are always exported, at 0 until a dial is refused.
var dialRefusalReasons = []string{refusedLoop, refusedNetwork}

var allStates = []membership.State{membership.StateActive, membership.StateDraining, membership.StateStale, membership.StateLeft}

// codeClasses are the values of upstream_requests_total's code_class;
// index 0 is "error".
var codeClasses = [...]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

// serviceStats are the counters of one Service.
type serviceStats struct {
	events   sync.Map // membership.EventKind -> *atomic.Uint64
	rejected sync.Map // reason -> *atomic.Uint64 (reasons are a small fixed set)
	retries  sync.Map // reason -> *atomic.Uint64
	// dialRefused: reason (loop, network) -> *atomic.Uint64, connections
	// to instances the dial guard refused.
	dialRefused sync.Map
	instances   sync.Map // instance id -> *instanceStats
	failovers   atomic.Uint64

	mu             sync.Mutex
	lastPrimary    []string // the last non-empty primary set seen
	lastPrimarySet map[string]struct{}

	// fleet counts the gateway fleet's messages (fleet_receive.go).
	fleet fleetCounters

	// roles and versions bound the label values taken from publishers'
	// strings (leader roles, versions).
	roles, versions labelValues
}

// Label values that come from what publishers announce are bounded per
// service and label: at most maxLabelValues distinct values, a value
// unused for labelValueIdle making room for a new one; beyond, the value
// is otherLabel. Without this, leader roles alone (16 per heartbeat, any
// string) could create about 80,000 series.
const (
	maxLabelValues = 64
	labelValueIdle = time.Hour
	otherLabel     = "other"
)

// labelValues is the set of values one label has exported recently.
type labelValues struct {
	mu   sync.Mutex
	seen map[string]time.Time // value -> last exported
}

// value returns v, or otherLabel when the label has too many values.
func (lv *labelValues) value(v string, now time.Time) string {
	lv.mu.Lock()
	defer lv.mu.Unlock()
	if lv.seen == nil {
		lv.seen = map[string]time.Time{}
	}
	if _, ok := lv.seen[v]; ok {
		lv.seen[v] = now
		return v
	}
	if len(lv.seen) >= maxLabelValues && !lv.evictIdle(now) {
		return otherLabel
	}
	lv.seen[v] = now
	return v
}

// evictIdle forgets the value unused longest, if it is idle.
func (lv *labelValues) evictIdle(now time.Time) bool {
	oldest, at := "", now
	for v, t := range lv.seen {
		if t.Before(at) {
			oldest, at = v, t
		}
	}
	if now.Sub(at) < labelValueIdle {
		return false
	}
	delete(lv.seen, oldest)
	return true
}

// instanceStats are the per-instance counters, dropped when the instance
// is forgotten.
type instanceStats struct {
	codes [len(codeClasses)]atomic.Uint64
}

func counterOf(m *sync.Map, key any) *atomic.Uint64 {
	if c, ok := m.Load(key); ok {
		return c.(*atomic.Uint64)
	}
	c, _ := m.LoadOrStore(key, new(atomic.Uint64))
	return c.(*atomic.Uint64)
}

// instance returns the counters of id, creating them on first use.
func (st *serviceStats) instance(id string) *instanceStats {
	if v, ok := st.instances.Load(id); ok {
		return v.(*instanceStats)
	}
	v, _ := st.instances.LoadOrStore(id, new(instanceStats))
	return v.(*instanceStats)
}

// countEvent counts one membership event of s. It is called for every
// event, off the request path.
func (s *Service) countEvent(ev membership.Event) {
	st := s.stats
	if st == nil {
		return
	}
	if ev.Kind == membership.EventForget {
		// bounded cardinality: a forgotten instance's series go away.
		st.instances.Delete(ev.ID)
	}
	n := uint64(ev.Messages())
	if ev.Kind == membership.EventRejected {
		counterOf(&st.rejected, ev.Reason).Add(n)
		return
	}
	counterOf(&st.events, ev.Kind).Add(n)
	s.notePrimary()
}

// countRetry counts one retry; reason is how the previous try ended.
func (s *Service) countRetry(reason string) {
	if s == nil || s.stats == nil {
		return
	}
	switch reason {
	case outcomeDial, outcomeStale, outcomeError, outcomeStatus5x:
	case "":
		reason = "unknown" // the cx transport is not in use
	default:
		reason = "other" // a custom lb_retry_match
	}
	counterOf(&s.stats.retries, reason).Add(1)
}

// countTry counts one try of a request at instance id.
func (s *Service) countTry(id string, resp *http.Response, err error) {
	if s.stats == nil || id == "" {
		return
	}
	class := 0
	if err == nil && resp != nil {
		if c := resp.StatusCode / 100; c >= 1 && c <= 5 {
			class = c
		}
	}
	s.stats.instance(id).codes[class].Add(1)
}

// notePrimary counts a failover when the primary moved to instances none
// of which was primary before. It runs on membership events and scrapes.
func (s *Service) notePrimary() {
	st := s.stats
	if st == nil {
		return
	}
	ids := s.primaryIDs(time.Now())
	if len(ids) == 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if slices.Equal(ids, st.lastPrimary) {
		return // the usual case: this runs on every membership event
	}
	if len(st.lastPrimary) > 0 && !st.wasPrimary(ids) {
		st.failovers.Add(1)
	}
	st.lastPrimary = ids
	// a primary tier can hold thousands of instances: a set keeps the
	// next comparison linear
	st.lastPrimarySet = make(map[string]struct{}, len(ids))
	for _, id := range ids {
		st.lastPrimarySet[id] = struct{}{}
	}
}

// wasPrimary reports whether any of ids was in the last primary set.
func (st *serviceStats) wasPrimary(ids []string) bool {
	for _, id := range ids {
		if _, ok := st.lastPrimarySet[id]; ok {
			return true
		}
	}
	return false
}

// metricsCollector exports the metrics of the services of one config. One
// is registered in each config's metrics registry.
type metricsCollector struct {
	mu       sync.Mutex
	services []*Service
}

// registerMetrics makes sure the registry of ctx's config exports s.
func registerMetrics(ctx caddy.Context, s *Service) error {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return nil
	}
	c := &metricsCollector{}
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return err
		}
		existing, ok := already.ExistingCollector.(*metricsCollector)
		if !ok {
			return errors.New("cx: another collector already exports caddy_cx_ metrics")
		}
		c = existing
	}
	c.add(s)
	return nil
}

func (c *metricsCollector) add(s *Service) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, have := range c.services {
		if have == s {
			return
		}
	}
	c.services = append(c.services, s)
}

// Describe implements prometheus.Collector.
func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the registries and
// counters now.
func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	services := append([]*Service(nil), c.services...)
	c.mu.Unlock()
	for _, s := range services {
		if s.link != nil {
			ch <- prometheus.MustNewConstMetric(descNATSConnected, prometheus.GaugeValue, boolFloat(s.link.connected()))
			ch <- prometheus.MustNewConstMetric(descNATSReconnects, prometheus.CounterValue, float64(s.link.reconnects.Load()))
			break
		}
	}
	slices.SortFunc(services, func(a, b *Service) int { return strings.Compare(a.prefix, b.prefix) })
	for _, s := range services {
		collectService(ch, s)
	}
}

func collectService(ch chan<- prometheus.Metric, s *Service) {
	now := time.Now()
	svc := s.prefix
	members := s.reg.Members()
	s.notePrimary()
	primary := map[string]bool{}
	for _, id := range s.primaryIDs(now) {
		primary[id] = true
	}
	counts := map[membership.State]int{}
	for _, m := range members {
		counts[m.State]++
		ch <- prometheus.MustNewConstMetric(descHeartbeatAge, prometheus.GaugeValue, now.Sub(m.LastSeen).Seconds(), svc, m.ID)
		ch <- prometheus.MustNewConstMetric(descPrimary, prometheus.GaugeValue, boolFloat(primary[m.ID]), svc, m.ID)
	}
	for _, state := range allStates {
		ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(counts[state]), svc, string(state))
	}
	st := s.stats
	if st == nil {
		return
	}
	// roles beyond the bound share the series `other`, since the
	// earliest of their conflicts
	since := map[string]time.Time{}
	var order []string
	for _, c := range s.reg.RoleConflicts() {
		role := st.roles.value(c.Role, now)
		if t, ok := since[role]; !ok || c.Since.Before(t) {
			if !ok {
				order = append(order, role)
			}
			since[role] = c.Since
		}
	}
	for _, role := range order {
		ch <- prometheus.MustNewConstMetric(descRoleConflict, prometheus.GaugeValue, float64(since[role].Unix()), svc, role)
	}
	if s.reg.Config().ConsistentVersions {
		ch <- prometheus.MustNewConstMetric(descServedVersion, prometheus.GaugeValue, 1, svc, st.versions.value(s.reg.Snapshot().Version, now))
	}
	for _, kind := range contractEvents {
		counterOf(&st.events, kind)
	}
	st.events.Range(func(k, v any) bool {
		ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(v.(*atomic.Uint64).Load()), svc, string(k.(membership.EventKind)))
		return true
	})
	for _, reason := range rejectionReasons {
		counterOf(&st.rejected, reason)
	}
	st.rejected.Range(func(k, v any) bool {
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(v.(*atomic.Uint64).Load()), svc, k.(string))
		return true
	})
	for _, reason := range retryReasons {
		counterOf(&st.retries, reason)
	}
	st.retries.Range(func(k, v any) bool {
		ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(v.(*atomic.Uint64).Load()), svc, k.(string))
		return true
	})
	for _, reason := range dialRefusalReasons {
		counterOf(&st.dialRefused, reason)
	}
	st.dialRefused.Range(func(k, v any) bool {
		ch <- prometheus.MustNewConstMetric(descDialRefused, prometheus.CounterValue, float64(v.(*atomic.Uint64).Load()), svc, k.(string))
		return true
	})
	ch <- prometheus.MustNewConstMetric(descFailovers, prometheus.CounterValue, float64(st.failovers.Load()), svc)
	collectFleet(ch, s, now)
	st.instances.Range(func(k, v any) bool {
		is := v.(*instanceStats)
		for i := range is.codes {
			if n := is.codes[i].Load(); n > 0 {
				ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(n), svc, k.(string), codeClasses[i])
			}
		}
		return true
	})
}

// collectFleet exports the fleet of s. Gateway ids are not labels: a
// fleet is counted by state, and GET /cx/gateways names its gateways.
func collectFleet(ch chan<- prometheus.Metric, s *Service, now time.Time) {
	svc, st := s.prefix, s.stats
	counts := map[string]int{membership.StateActiveName: 0, membership.StateStaleName: 0, membership.StateLeftName: 0}
	split := false
	for _, g := range s.gatewayStatus(now) {
		counts[g.State]++
	}
	if f := s.fleetNow(); f != nil {
		_, split = f.splitView(now)
	}
	for _, state := range []string{membership.StateActiveName, membership.StateStaleName, membership.StateLeftName} {
		ch <- prometheus.MustNewConstMetric(descGateways, prometheus.GaugeValue, float64(counts[state]), svc, state)
	}
	ch <- prometheus.MustNewConstMetric(descSplitView, prometheus.GaugeValue, boolFloat(split), svc)
	for k, kind := range fleetKindNames {
		for r, result := range fleetResultNames {
			ch <- prometheus.MustNewConstMetric(descFleetMessages, prometheus.CounterValue,
				float64(st.fleet.messages[k][r].Load()), svc, kind, result)
		}
	}
	ch <- prometheus.MustNewConstMetric(descObservationsApplied, prometheus.CounterValue, float64(st.fleet.applied.Load()), svc)
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Interface guard.
var _ prometheus.Collector = (*metricsCollector)(nil)
