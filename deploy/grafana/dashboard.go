// Package grafana builds the Grafana dashboard of caddy-cx,
// deploy/grafana/caddy-cx.json: import that file into Grafana (Dashboards,
// New, Import) and pick a Prometheus data source that scrapes the
// gateways. Edit the panels here and run `go generate ./deploy/grafana`;
// a test fails when the JSON file is not what this code generates.
//
// The JSON is written with the standard library rather than a Grafana SDK:
// it is a plain document (schemaVersion 39), and the module keeps no
// dependency for it.
package grafana

//go:generate go run ./gen -o caddy-cx.json

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
)

// UID is the dashboard's uid, stable so that links and provisioning keep
// pointing at it.
const UID = "caddy-cx"

// filter restricts a caddy_cx_ selector to the chosen services and
// gateways (Prometheus's instance label is the gateway; the cx instance
// id is instance_id).
const (
	filter      = `service=~"$service", instance=~"$gateway"`
	gatewayOnly = `instance=~"$gateway"`
	rate        = `[$__rate_interval]`
)

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

var promDS = &datasource{Type: "prometheus", UID: "${datasource}"}

type gridPos struct {
	H int `json:"h"`
	W int `json:"w"`
	X int `json:"x"`
	Y int `json:"y"`
}

type target struct {
	Datasource   *datasource `json:"datasource"`
	Expr         string      `json:"expr"`
	LegendFormat string      `json:"legendFormat"`
	RefID        string      `json:"refId"`
}

// Panel is one Grafana panel (a row has no targets).
type Panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description,omitempty"`
	Datasource  *datasource    `json:"datasource,omitempty"`
	GridPos     gridPos        `json:"gridPos"`
	Collapsed   *bool          `json:"collapsed,omitempty"`
	Targets     []target       `json:"targets,omitempty"`
	FieldConfig map[string]any `json:"fieldConfig,omitempty"`
	Options     map[string]any `json:"options,omitempty"`
	Panels      []Panel        `json:"panels,omitempty"`

	width, height int
}

// query is one target of a panel: an expression and its legend.
type query struct{ expr, legend string }

func timeseries(title, desc, unit string, w int, stacked bool, qs ...query) Panel {
	custom := map[string]any{"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
	if stacked {
		custom["stacking"] = map[string]any{"group": "A", "mode": "normal"}
		custom["fillOpacity"] = 40
	}
	p := newPanel("timeseries", title, desc, w, 8, qs)
	p.FieldConfig = map[string]any{
		"defaults":  map[string]any{"unit": unit, "min": 0, "custom": custom},
		"overrides": []any{},
	}
	p.Options = map[string]any{
		"legend":  map[string]any{"displayMode": "table", "placement": "right", "showLegend": true, "calcs": []string{"lastNotNull", "max"}},
		"tooltip": map[string]any{"mode": "multi", "sort": "desc"},
	}
	return p
}

// stateTimeline shows which value a series had over time, by name.
func stateTimeline(title, desc string, w int, mappings map[string]string, colors map[string]string, qs ...query) Panel {
	p := newPanel("state-timeline", title, desc, w, 8, qs)
	options := map[string]any{}
	for i, v := range slices.Sorted(maps.Keys(mappings)) {
		options[v] = map[string]any{"text": mappings[v], "color": colors[v], "index": i}
	}
	defaults := map[string]any{"custom": map[string]any{"fillOpacity": 80, "lineWidth": 0}}
	if len(options) > 0 {
		defaults["mappings"] = []any{map[string]any{"type": "value", "options": options}}
	}
	p.FieldConfig = map[string]any{"defaults": defaults, "overrides": []any{}}
	p.Options = map[string]any{
		"showValue": "auto", "mergeValues": true, "rowHeight": 0.9, "alignValue": "left",
		"legend": map[string]any{"displayMode": "list", "placement": "bottom", "showLegend": false},
	}
	return p
}

func stat(title, desc string, w int, thresholds []any, qs ...query) Panel {
	p := newPanel("stat", title, desc, w, 8, qs)
	p.FieldConfig = map[string]any{
		"defaults": map[string]any{
			"unit":       "none",
			"thresholds": map[string]any{"mode": "absolute", "steps": thresholds},
			"color":      map[string]any{"mode": "thresholds"},
		},
		"overrides": []any{},
	}
	p.Options = map[string]any{
		"colorMode": "background", "graphMode": "area", "textMode": "value_and_name", "justifyMode": "auto",
		"orientation": "auto", "reduceOptions": map[string]any{"calcs": []string{"lastNotNull"}, "fields": "", "values": false},
	}
	return p
}

func newPanel(kind, title, desc string, w, h int, qs []query) Panel {
	p := Panel{Type: kind, Title: title, Description: desc, Datasource: promDS, width: w, height: h}
	for i, q := range qs {
		p.Targets = append(p.Targets, target{Datasource: promDS, Expr: q.expr, LegendFormat: q.legend, RefID: string(rune('A' + i))})
	}
	return p
}

func row(title string) Panel {
	collapsed := false
	return Panel{Type: "row", Title: title, Collapsed: &collapsed, width: 24, height: 1}
}

// panels are the dashboard's rows and panels, in reading order.
func panels() []Panel {
	return []Panel{
		row("Fleet"),
		timeseries("Instances by state", "caddy_cx_instances: known instances per state, as the gateways see them (the highest count among the chosen gateways).",
			"none", 12, true,
			query{`max by (service, state) (caddy_cx_instances{` + filter + `})`, "{{service}} {{state}}"}),
		stat("Active instances", "Fewest active instances any chosen gateway sees. 0: every request gets 503 (alert CxNoActiveInstance).",
			6, []any{map[string]any{"color": "red", "value": nil}, map[string]any{"color": "green", "value": 1}},
			query{`min by (service) (caddy_cx_instances{` + filter + `, state="active"})`, "{{service}}"}),
		stateTimeline("NATS connection", "caddy_cx_nats_connected per gateway. Disconnected: the gateway routes to what it last heard and hears no change (alert CxNATSDisconnected).",
			6, map[string]string{"0": "disconnected", "1": "connected"}, map[string]string{"0": "red", "1": "green"},
			query{`caddy_cx_nats_connected{` + gatewayOnly + `}`, "{{instance}}"}),

		row("Routing"),
		stateTimeline("Primary instance", "caddy_cx_primary: the instance(s) new requests go to under the failover policy, per cx instance id.",
			12, map[string]string{"0": "standby", "1": "primary"}, map[string]string{"0": "transparent", "1": "green"},
			query{`max by (service, instance_id) (caddy_cx_primary{` + filter + `})`, "{{service}} {{instance_id}}"}),
		timeseries("Failovers", "caddy_cx_failovers_total: times the primary moved to other instances (alert CxPrimaryChanged).",
			"none", 6, false,
			query{`max by (service) (increase(caddy_cx_failovers_total{` + filter + `}` + rate + `))`, "{{service}}"}),
		timeseries("NATS reconnects", "caddy_cx_nats_reconnects_total: times a gateway's NATS connection came back.",
			"none", 6, false,
			query{`sum by (instance) (increase(caddy_cx_nats_reconnects_total{` + gatewayOnly + `}` + rate + `))`, "{{instance}}"}),
		timeseries("Retries by reason", "caddy_cx_retries_total: requests retried on another instance, by how the previous try ended.",
			"reqps", 12, true,
			query{`sum by (service, reason) (rate(caddy_cx_retries_total{` + filter + `}` + rate + `))`, "{{service}} {{reason}}"}),
		timeseries("Dial refusals by reason", "caddy_cx_dial_refused_total: connections to instances the dial guard refused: loop (the gateway itself) or network (outside allow_networks). Alert CxDialRefused.",
			"ops", 12, true,
			query{`sum by (service, reason) (rate(caddy_cx_dial_refused_total{` + filter + `}` + rate + `))`, "{{service}} {{reason}}"}),

		row("Gateways"),
		timeseries("Gateways by state", "caddy_cx_gateways: the gateways of each service as each chosen gateway hears them (its own heartbeats included); a stale one stopped announcing itself.",
			"none", 6, true,
			query{`max by (service, state) (caddy_cx_gateways{` + filter + `})`, "{{service}} {{state}}"}),
		stateTimeline("Split view", "caddy_cx_fleet_split_view: 1 while the live gateways have named different primaries for more than 2 s (alert CxFleetSplitView).",
			6, map[string]string{"0": "agree", "1": "split"}, map[string]string{"0": "green", "1": "red"},
			query{`max by (service) (caddy_cx_fleet_split_view{` + filter + `})`, "{{service}}"}),
		timeseries("Shared failures applied", "caddy_cx_observations_applied_total: instances marked failing because another gateway saw them fail (share_failures).",
			"ops", 6, false,
			query{`sum by (service) (rate(caddy_cx_observations_applied_total{` + filter + `}` + rate + `))`, "{{service}}"}),
		timeseries("Fleet messages by result", "caddy_cx_fleet_messages_total: gateway heartbeats and observations accepted, rejected (invalid, clock, rate) or ignored (unannounced publisher, replays).",
			"ops", 6, true,
			query{`sum by (service, kind, result) (rate(caddy_cx_fleet_messages_total{` + filter + `}` + rate + `))`, "{{service}} {{kind}} {{result}}"}),

		row("Heartbeats"),
		timeseries("Heartbeat age", "caddy_cx_heartbeat_age_seconds: seconds since each instance's last accepted heartbeat (the oldest among the chosen gateways). Above stale_after the instance is stale.",
			"s", 12, false,
			query{`max by (service, instance_id) (caddy_cx_heartbeat_age_seconds{` + filter + `})`, "{{service}} {{instance_id}}"}),
		timeseries("Rejected heartbeats by reason", "caddy_cx_heartbeats_rejected_total: refused messages by reason (docs/troubleshooting.md lists them). Alert CxHeartbeatsRejected.",
			"ops", 12, true,
			query{`sum by (service, reason) (rate(caddy_cx_heartbeats_rejected_total{` + filter + `}` + rate + `))`, "{{service}} {{reason}}"}),
		timeseries("Membership events", "caddy_cx_membership_events_total: joins, leaves, stale instances, restarts, conflicts and the other changes, per interval.",
			"none", 12, true,
			query{`max by (service, event) (increase(caddy_cx_membership_events_total{` + filter + `}` + rate + `)) > 0`, "{{service}} {{event}}"}),
		timeseries("Leader role conflicts", "How long each leader role has been claimed by more than one active instance (split brain), from caddy_cx_leader_role_conflict_since_timestamp_seconds. Alert CxLeaderRoleConflict.",
			"s", 6, false,
			query{`time() - min by (service, role) (caddy_cx_leader_role_conflict_since_timestamp_seconds{` + filter + `})`, "{{service}} {{role}}"}),
		stateTimeline("Served version", "caddy_cx_served_version_info: the version routed with `versions consistent`.",
			6, nil, nil,
			query{`max by (service, version) (caddy_cx_served_version_info{` + filter + `})`, "{{service}} {{version}}"}),

		row("Requests"),
		timeseries("Requests per instance", "caddy_cx_upstream_requests_total: tries of requests at each instance through the cx transport.",
			"reqps", 8, true,
			query{`sum by (service, instance_id) (rate(caddy_cx_upstream_requests_total{` + filter + `}` + rate + `))`, "{{service}} {{instance_id}}"}),
		timeseries("5xx and errors per instance", "Tries answered 5xx, or with no response at all (error: connection error, timeout, cancelled).",
			"reqps", 8, true,
			query{`sum by (service, instance_id, code_class) (rate(caddy_cx_upstream_requests_total{` + filter + `, code_class=~"5xx|error"}` + rate + `))`, "{{service}} {{instance_id}} {{code_class}}"}),
		timeseries("5xx and error ratio per instance", "Share of tries at each instance that were answered 5xx or failed.",
			"percentunit", 8, false,
			query{`sum by (service, instance_id) (rate(caddy_cx_upstream_requests_total{` + filter + `, code_class=~"5xx|error"}` + rate + `))` +
				` / sum by (service, instance_id) (rate(caddy_cx_upstream_requests_total{` + filter + `}` + rate + `))`, "{{service}} {{instance_id}}"}),
	}
}

// layout numbers the panels and places them left to right, wrapping at
// Grafana's 24 columns; a row starts a new line.
func layout(ps []Panel) []Panel {
	x, y, lineH := 0, 0, 0
	for i := range ps {
		p := &ps[i]
		p.ID = i + 1
		if p.Type == "row" || x+p.width > 24 {
			x, y, lineH = 0, y+lineH, 0
		}
		p.GridPos = gridPos{H: p.height, W: p.width, X: x, Y: y}
		x += p.width
		lineH = max(lineH, p.height)
		if p.Type == "row" {
			x, y, lineH = 0, y+p.height, 0
		}
	}
	return ps
}

// variables are the dashboard's template variables: the data source, and
// the services and gateways to show.
func variables() []any {
	labelValues := func(name, label, q string) map[string]any {
		return map[string]any{
			"name": name, "label": label, "type": "query", "datasource": promDS,
			// the string form, which every Grafana version since 7 reads
			"query":      q,
			"definition": q, "refresh": 2, "includeAll": true, "multi": true, "allValue": ".*",
			"current": map[string]any{}, "options": []any{}, "regex": "", "sort": 1, "hide": 0,
		}
	}
	return []any{
		map[string]any{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
			"current": map[string]any{}, "options": []any{}, "refresh": 1, "regex": "", "hide": 0},
		labelValues("service", "Service", "label_values(caddy_cx_instances, service)"),
		labelValues("gateway", "Gateway", "label_values(caddy_cx_nats_connected, instance)"),
	}
}

// JSON returns the dashboard as written to caddy-cx.json.
func JSON() ([]byte, error) {
	d := map[string]any{
		"title":         "caddy-cx",
		"uid":           UID,
		"description":   "caddy-cx gateways: instances, primary and failovers, heartbeats, NATS, requests per instance. Metrics: docs/METRICS.md.",
		"tags":          []string{"caddy", "caddy-cx", "nats"},
		"editable":      true,
		"graphTooltip":  1,
		"schemaVersion": 39,
		"version":       1,
		"refresh":       "30s",
		"time":          map[string]any{"from": "now-3h", "to": "now"},
		"timepicker":    map[string]any{},
		"timezone":      "",
		"links":         []any{},
		"annotations": map[string]any{"list": []any{map[string]any{
			"builtIn": 1, "datasource": map[string]any{"type": "grafana", "uid": "-- Grafana --"},
			"enable": true, "hide": true, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
		}}},
		"templating": map[string]any{"list": variables()},
		"panels":     layout(panels()),
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
