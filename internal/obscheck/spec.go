// Package obscheck holds the metric contract of caddy-cx (names, types,
// labels and the label values always exported) and reads the metric and
// label names that PromQL expressions use, so that tests can hold the
// Grafana dashboard (deploy/grafana) and the alert rules
// (deploy/prometheus) to that contract and to a live scrape.
//
// It is test support: nothing in the gateway imports it.
package obscheck

// Family is one metric family of the contract.
type Family struct {
	Type   string   // "counter" or "gauge"
	Labels []string // label names, sorted
}

// Families are the caddy_cx_ metric families, as docs/METRICS.md lists them.
var Families = map[string]Family{
	"caddy_cx_instances":                                    {"gauge", []string{"service", "state"}},
	"caddy_cx_heartbeat_age_seconds":                        {"gauge", []string{"instance_id", "service"}},
	"caddy_cx_primary":                                      {"gauge", []string{"instance_id", "service"}},
	"caddy_cx_membership_events_total":                      {"counter", []string{"event", "service"}},
	"caddy_cx_heartbeats_rejected_total":                    {"counter", []string{"reason", "service"}},
	"caddy_cx_dial_refused_total":                           {"counter", []string{"reason", "service"}},
	"caddy_cx_upstream_requests_total":                      {"counter", []string{"code_class", "instance_id", "service"}},
	"caddy_cx_retries_total":                                {"counter", []string{"reason", "service"}},
	"caddy_cx_failovers_total":                              {"counter", []string{"service"}},
	"caddy_cx_leader_role_conflict_since_timestamp_seconds": {"gauge", []string{"role", "service"}},
	"caddy_cx_served_version_info":                          {"gauge", []string{"service", "version"}},
	"caddy_cx_nats_connected":                               {"gauge", nil},
	"caddy_cx_nats_reconnects_total":                        {"counter", nil},
	"caddy_cx_gateways":                                     {"gauge", []string{"service", "state"}},
	"caddy_cx_fleet_messages_total":                         {"counter", []string{"kind", "result", "service"}},
	"caddy_cx_fleet_split_view":                             {"gauge", []string{"service"}},
	"caddy_cx_observations_applied_total":                   {"counter", []string{"service"}},
}

// TargetLabels are the labels Prometheus adds to every scraped series; no
// caddy-cx metric may use them, and queries may.
var TargetLabels = []string{"instance", "job"}

// Preinitialised are, per counter family and label, the values exported
// (at 0) from the first scrape on, so that increase() and rate() see the
// first event.
var Preinitialised = map[string]map[string][]string{
	"caddy_cx_membership_events_total":   {"event": Events},
	"caddy_cx_heartbeats_rejected_total": {"reason": RejectionReasons},
	"caddy_cx_retries_total":             {"reason": RetryReasons},
	"caddy_cx_dial_refused_total":        {"reason": DialRefusalReasons},
	"caddy_cx_fleet_messages_total":      {"kind": FleetKinds, "result": FleetResults},
}

// Events are the values of membership_events_total's event label: every
// membership.EventKind except rejected, which heartbeats_rejected_total
// counts (one counter per fact).
var Events = []string{
	"join", "leave", "stale", "restart", "conflict", "draining", "ready", "forget",
	"flapping", "version_switch", "role_conflict", "role_resolved", "alive_unheard", "priority_clamped",
}

// RejectionReasons are the values of heartbeats_rejected_total's reason
// label: the fields heartbeat.Decode names, the rules of
// membership.Config.refuse, the registry's limits, the watcher's dropped
// messages, and invalid (an error without a field).
var RejectionReasons = []string{
	// fields of the message (heartbeat.Error.Field)
	"subject", "payload", "json", "proto", "id", "url", "state", "started_at", "seq",
	"interval_ms", "priority", "version", "leader_roles", "meta",
	// rules (membership.Config.refuse); "id" also stands for allow_ids
	"clock", "scheme", "network", "loop",
	// limits
	"rate", "capacity", "dropped",
	// a decode error that names no field
	"invalid",
}

// RetryReasons are the values of retries_total's reason label.
var RetryReasons = []string{"dial_error", "stale", "transport_error", "status_5xx", "other", "unknown"}

// DialRefusalReasons are the values of dial_refused_total's reason label.
var DialRefusalReasons = []string{"loop", "network"}

// FleetKinds and FleetResults are the values of fleet_messages_total's
// kind and result labels.
var (
	FleetKinds   = []string{"heartbeat", "observation"}
	FleetResults = []string{"accepted", "rejected", "ignored"}
)
