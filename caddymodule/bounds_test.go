package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// testService is a real service (registry, health, counters) fed by
// Apply, without NATS, released at the end of the test.
func testService(t testing.TB, prefix string, cfg membership.Config) *Service {
	t.Helper()
	cfg.Prefix = prefix
	c := &claim{settings: serviceSettings{membership: cfg}, logger: zap.NewNop()}
	s, err := acquireService(&natsLink{}, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.release(c) })
	s.reg.SetControls(nil) // never started: no control bucket to await
	return s
}

// heartbeatOf returns a valid heartbeat of id and its encoding.
func heartbeatOf(t testing.TB, id string, edit func(*heartbeat.Message)) (*heartbeat.Message, []byte) {
	t.Helper()
	m := &heartbeat.Message{Proto: heartbeat.Proto, Seq: 1, ID: id, URL: "http://127.0.0.1:8080", State: heartbeat.StateReady,
		StartedAt: time.Now().UTC().Add(-time.Minute), IntervalMS: 1000, Version: "1.0"}
	if edit != nil {
		edit(m)
	}
	data, err := heartbeat.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	// raw, as a hostile publisher sends them (encoding/json escapes them)
	data = bytes.ReplaceAll(bytes.ReplaceAll(data, []byte(`\u2028`), []byte("\u2028")), []byte(`\u2029`), []byte("\u2029"))
	parsed, err := heartbeat.Parse(data)
	if err != nil {
		t.Fatalf("the test's heartbeat is invalid: %v", err)
	}
	return parsed, data
}

// statusBody is the status JSON of prefix as the admin API writes it.
func statusBody(t testing.TB, prefix string, query string) []byte {
	t.Helper()
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/cx/instances?subject_prefix="+prefix+query, nil)
	if err := (AdminInstances{}).handleInstances(w, r); err != nil {
		t.Fatalf("GET /cx/instances: %v", err)
	}
	if w.Code != 200 {
		t.Fatalf("GET /cx/instances: %d", w.Code)
	}
	return w.Body.Bytes()
}

// TestStatusJSONNoEscapeBlowUp: a heartbeat full of < (and of U+2028)
// makes status JSON about as large as the heartbeat, not six times.
func TestStatusJSONNoEscapeBlowUp(t *testing.T) {
	for _, fill := range []string{"<", ">&", "\u2028"} {
		prefix := "cx.blowup" + fmt.Sprint(len(fill))
		s := testService(t, prefix, membership.Config{})
		m, data := heartbeatOf(t, "app1", func(m *heartbeat.Message) {
			m.Meta = map[string]string{}
			for k := 0; k < heartbeat.MaxMetaEntries; k++ {
				m.Meta[fmt.Sprintf("k%02d", k)] = strings.Repeat(fill, map[string]int{"<": 200, ">&": 100, "\u2028": 66}[fill])
			}
		})
		for len(data) > heartbeat.MaxPayload {
			t.Fatalf("heartbeat too large: %d", len(data))
		}
		s.reg.Apply(m, time.Now())
		body := statusBody(t, prefix, "")
		ratio := float64(len(body)) / float64(len(data))
		t.Logf("fill %q: heartbeat %d bytes, status JSON %d bytes (%.2fx)", fill, len(data), len(body), ratio)
		if ratio > 1.2 {
			t.Errorf("fill %q: status JSON is %.2fx the heartbeat", fill, ratio)
		}
		var rep StatusReport
		if err := json.Unmarshal(body, &rep); err != nil {
			t.Fatal(err)
		}
		if got := rep.Services[0].Instances[0].Meta["k00"]; got != m.Meta["k00"] {
			t.Errorf("meta not round-tripped: %q", got)
		}
	}
}

func TestUnescapeLineSeparators(t *testing.T) {
	for in, want := range map[string]string{
		`"a\u2028b\u2029"`: "\"a\u2028b\u2029\"",
		`"\\u2028"`:        `"\\u2028"`,
		`"\\\u2028"`:       "\"\\\\\u2028\"",
		`"\u2027\u202"`:    `"\u2027\u202"`,
	} {
		if got := string(unescapeLineSeparators([]byte(in))); got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}

// TestStatusJSONCapped: 10,000 instances are counted, but at most the
// limit are listed, primary ones first.
func TestStatusJSONCapped(t *testing.T) {
	const prefix = "cx.many"
	s := testService(t, prefix, membership.Config{RebuildEvery: RebuildEvery})
	now := time.Now()
	for i := range 10000 {
		m, _ := heartbeatOf(t, fmt.Sprintf("app%05d", i), func(m *heartbeat.Message) {
			m.Priority = 10
			if i == 9999 {
				m.Priority = 0 // the primary, last in id order
			}
			if i%4 == 0 {
				m.State = heartbeat.StateDraining
			}
		})
		s.reg.Apply(m, now)
	}
	eventually(t, 5*time.Second, func() bool { return len(s.reg.Snapshot().Routes) == 7500 }, "routes rebuilt")
	body := statusBody(t, prefix, "")
	var rep StatusReport
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	svc := rep.Services[0]
	t.Logf("10,000 instances: %d bytes of JSON, %d listed", len(body), len(svc.Instances))
	if len(svc.Instances) != DefaultStatusLimit || svc.Unlisted != 10000-DefaultStatusLimit || svc.InstanceCount != 10000 {
		t.Fatalf("listed %d, unlisted %d, count %d", len(svc.Instances), svc.Unlisted, svc.InstanceCount)
	}
	if svc.StateCounts["active"] != 7500 || svc.StateCounts["draining"] != 2500 {
		t.Fatalf("state counts %v", svc.StateCounts)
	}
	found := false
	for _, in := range svc.Instances {
		found = found || (in.ID == "app09999" && in.Primary)
	}
	if !found {
		t.Fatal("the primary instance is not listed")
	}
	if !strings.Contains(strings.Join(svc.Warnings, "\n"), "9000 more instances are not listed") {
		t.Fatalf("warnings %v", svc.Warnings)
	}
	if len(body) > 1_000_000 {
		t.Fatalf("%d bytes", len(body))
	}
	if err := json.Unmarshal(statusBody(t, prefix, "&limit=20000"), &rep); err != nil || len(rep.Services[0].Instances) != 10000 {
		t.Fatalf("?limit=20000: %v, %d listed", err, len(rep.Services[0].Instances))
	}
}

// TestStatusJSONFarFutureTime: a started_at beyond what JSON can hold
// (year 10000 in UTC) is rejected by the registry, and the report keeps
// answering; the report's own clamp stays as a second line of defence.
func TestStatusJSONFarFutureTime(t *testing.T) {
	const prefix = "cx.future"
	s := testService(t, prefix, membership.Config{})
	m, _ := heartbeatOf(t, "app1", nil)
	m.StartedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) // past any decoder check
	s.reg.Apply(m, time.Now())
	var rep StatusReport
	if err := json.Unmarshal(statusBody(t, prefix, ""), &rep); err != nil {
		t.Fatal(err)
	}
	if n := len(rep.Services[0].Instances); n != 0 {
		t.Fatalf("%d instances listed, want the year-10000 one rejected", n)
	}
	if y := jsonSafeTime(m.StartedAt).Year(); y != 9999 {
		t.Fatalf("jsonSafeTime: year %d", y)
	}
	if _, err := json.Marshal(jsonSafeTime(m.StartedAt)); err != nil {
		t.Fatal(err)
	}
}

// TestRoleLabelBounded: 10,000 distinct leader roles, each claimed by two
// active instances (10,000 conflicts), make at most maxLabelValues + 1
// role series.
func TestRoleLabelBounded(t *testing.T) {
	const prefix = "cx.roles"
	s := testService(t, prefix, membership.Config{RebuildEvery: RebuildEvery})
	now := time.Now()
	const roles = 10000
	for i := 0; i < roles/heartbeat.MaxRoles; i++ {
		var claim []string
		for r := 0; r < heartbeat.MaxRoles; r++ {
			claim = append(claim, fmt.Sprintf("role-%05d", i*heartbeat.MaxRoles+r))
		}
		for _, twin := range []string{"a", "b"} {
			m, _ := heartbeatOf(t, fmt.Sprintf("app%04d%s", i, twin), func(m *heartbeat.Message) { m.LeaderRoles = claim })
			s.reg.Apply(m, now)
		}
	}
	eventually(t, 5*time.Second, func() bool { return len(s.reg.RoleConflicts()) == roles }, "10,000 role conflicts")
	reg := prometheus.NewRegistry()
	c := &metricsCollector{}
	c.add(s)
	reg.MustRegister(c)
	for range 2 { // twice: the second scrape must not add series
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		series := 0
		other := false
		for _, f := range families {
			if f.GetName() != "caddy_cx_leader_role_conflict_since_timestamp_seconds" {
				continue
			}
			for _, m := range f.GetMetric() {
				series++
				for _, l := range m.GetLabel() {
					other = other || (l.GetName() == "role" && l.GetValue() == otherLabel)
				}
			}
		}
		t.Logf("%d role conflicts: %d series", roles, series)
		if series > maxLabelValues+1 || !other {
			t.Fatalf("%d role series (other: %v), want at most %d", series, other, maxLabelValues+1)
		}
	}
}

// TestLabelValuesIdleMakeRoom: a value unused for labelValueIdle gives its
// place to a new one (a new version after many deploys), a busy one not.
func TestLabelValuesIdleMakeRoom(t *testing.T) {
	var lv labelValues
	now := time.Now()
	for i := range maxLabelValues {
		if got := lv.value(fmt.Sprint("v", i), now); got != fmt.Sprint("v", i) {
			t.Fatalf("value %d: %s", i, got)
		}
	}
	if got := lv.value("new", now.Add(time.Minute)); got != otherLabel {
		t.Fatalf("beyond the bound: %s", got)
	}
	later := now.Add(labelValueIdle)
	for i := 1; i < maxLabelValues; i++ {
		lv.value(fmt.Sprint("v", i), later) // all busy but v0
	}
	if got := lv.value("new", later); got != "new" {
		t.Fatalf("with v0 idle: %s", got)
	}
	if got := lv.value("newer", later); got != otherLabel {
		t.Fatalf("with none idle: %s", got)
	}
}
