package heartbeat

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	gwSubject  = "cx.ha.gw.gw1"
	obsSubject = "cx.ha.obs.gw1"
)

// gatewayExample is a valid gateway heartbeat of gw1.
const gatewayExample = `{"proto":1,"kind":"gateway","id":"gw1","state":"active","started_at":"2026-11-25T21:00:00.5Z",` +
	`"seq":7,"interval_ms":1000,"version":"v1.2.0","nats_server":"n1","primary":["app1","app2"],"inflight":3,"control":true,"control_revision":42}`

// observationExample is a valid observation of gw1.
const observationExample = `{"proto":1,"kind":"observation","gateway":"gw1","started_at":"2026-11-25T21:00:00.5Z",` +
	`"seq":3,"failed":[{"id":"app1","started_at":"2026-11-25T20:00:00.123456789Z"}]}`

// edit returns example with the top-level fields of kv set (a nil value
// removes the field; a json.RawMessage is inserted as is).
func edit(t testing.TB, example string, kv ...any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(example), &m); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(m, k)
			continue
		}
		m[k] = kv[i+1]
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func failedN(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = map[string]any{"id": fmt.Sprintf("app%d", i), "started_at": "2026-11-25T20:00:00Z"}
	}
	return out
}

func TestDecodeGateway(t *testing.T) {
	long := strings.Repeat("x", 65)
	cases := []struct {
		name    string
		subject string // default gwSubject
		data    []byte
		field   string // "" accepts
		check   func(*GatewayMessage) bool
	}{
		{name: "example", data: []byte(gatewayExample), check: func(m *GatewayMessage) bool {
			return m.ID == "gw1" && m.State == GatewayStateActive && m.Seq == 7 && m.Interval() == time.Second &&
				m.Version == "v1.2.0" && m.NATSServer == "n1" && reflect.DeepEqual(m.Primary, []string{"app1", "app2"}) &&
				m.InFlight == 3 && m.Control && m.ControlRevision == 42 && m.StartedAt.Equal(time.Date(2026, 11, 25, 21, 0, 0, 5e8, time.UTC))
		}},
		{name: "leaving", data: edit(t, gatewayExample, "state", "leaving"), check: func(m *GatewayMessage) bool { return m.State == GatewayStateLeaving }},
		{name: "optional fields missing", data: edit(t, gatewayExample, "version", nil, "nats_server", nil, "primary", nil, "inflight", nil, "control", nil),
			check: func(m *GatewayMessage) bool {
				return m.Primary == nil && m.InFlight == 0 && !m.Control && m.Version == ""
			}},
		{name: "optional fields null", data: edit(t, gatewayExample, "primary", raw("null"), "inflight", raw("null"), "control", raw("null"), "version", raw("null")),
			check: func(m *GatewayMessage) bool { return m.Primary == nil && m.InFlight == 0 && !m.Control }},
		{name: "unknown fields ignored", data: edit(t, gatewayExample, "future", []any{1, "x"}), check: func(m *GatewayMessage) bool { return m.ID == "gw1" }},
		{name: "16 primaries", data: edit(t, gatewayExample, "primary", ids(16))},
		{name: "max inflight", data: edit(t, gatewayExample, "inflight", raw("2147483647"))},
		{name: "max control_revision", data: edit(t, gatewayExample, "control_revision", raw("9007199254740991"))},
		{name: "control_revision null", data: edit(t, gatewayExample, "control_revision", raw("null")),
			check: func(m *GatewayMessage) bool { return m.ControlRevision == 0 }},

		// every required field missing
		{name: "proto missing", data: edit(t, gatewayExample, "proto", nil), field: "proto"},
		{name: "kind missing", data: edit(t, gatewayExample, "kind", nil), field: "kind"},
		{name: "id missing", data: edit(t, gatewayExample, "id", nil), field: "id"},
		{name: "state missing", data: edit(t, gatewayExample, "state", nil), field: "state"},
		{name: "started_at missing", data: edit(t, gatewayExample, "started_at", nil), field: "started_at"},
		{name: "seq missing", data: edit(t, gatewayExample, "seq", nil), field: "seq"},
		{name: "interval_ms missing", data: edit(t, gatewayExample, "interval_ms", nil), field: "interval_ms"},
		{name: "id null", data: edit(t, gatewayExample, "id", raw("null")), field: "id"},

		// wrong types
		{name: "proto string", data: edit(t, gatewayExample, "proto", "1"), field: "proto"},
		{name: "proto float", data: edit(t, gatewayExample, "proto", raw("1.0")), field: "proto"},
		{name: "kind number", data: edit(t, gatewayExample, "kind", 1), field: "kind"},
		{name: "id number", data: edit(t, gatewayExample, "id", 1), field: "id"},
		{name: "state bool", data: edit(t, gatewayExample, "state", true), field: "state"},
		{name: "started_at number", data: edit(t, gatewayExample, "started_at", 1), field: "started_at"},
		{name: "seq string", data: edit(t, gatewayExample, "seq", "7"), field: "seq"},
		{name: "seq exponent", data: edit(t, gatewayExample, "seq", raw("7e0")), field: "seq"},
		{name: "interval float", data: edit(t, gatewayExample, "interval_ms", raw("1000.5")), field: "interval_ms"},
		{name: "version number", data: edit(t, gatewayExample, "version", 2), field: "version"},
		{name: "nats_server object", data: edit(t, gatewayExample, "nats_server", map[string]any{}), field: "nats_server"},
		{name: "primary string", data: edit(t, gatewayExample, "primary", "app1"), field: "primary"},
		{name: "primary numbers", data: edit(t, gatewayExample, "primary", []any{1}), field: "primary"},
		{name: "inflight string", data: edit(t, gatewayExample, "inflight", "3"), field: "inflight"},
		{name: "control string", data: edit(t, gatewayExample, "control", "true"), field: "control"},
		{name: "control number", data: edit(t, gatewayExample, "control", 1), field: "control"},

		// out of range
		{name: "proto 2", data: edit(t, gatewayExample, "proto", 2), field: "proto"},
		{name: "kind observation", data: edit(t, gatewayExample, "kind", "observation"), field: "kind"},
		{name: "kind Gateway", data: edit(t, gatewayExample, "kind", "Gateway"), field: "kind"},
		{name: "id invalid", data: edit(t, gatewayExample, "id", "gw.1"), field: "id"},
		{name: "id other than subject", data: edit(t, gatewayExample, "id", "gw2"), field: "id"},
		{name: "state ready", data: edit(t, gatewayExample, "state", "ready"), field: "state"},
		{name: "started_at not RFC 3339", data: edit(t, gatewayExample, "started_at", "2026-11-25 21:00:00"), field: "started_at"},
		{name: "started_at comma", data: edit(t, gatewayExample, "started_at", "2026-11-25T21:00:00,5Z"), field: "started_at"},
		{name: "started_at offset 24h", data: edit(t, gatewayExample, "started_at", "2026-11-25T21:00:00+24:00"), field: "started_at"},
		{name: "seq 0", data: edit(t, gatewayExample, "seq", 0), field: "seq"},
		{name: "seq 2^53", data: edit(t, gatewayExample, "seq", raw("9007199254740992")), field: "seq"},
		{name: "seq negative", data: edit(t, gatewayExample, "seq", -1), field: "seq"},
		{name: "interval 99", data: edit(t, gatewayExample, "interval_ms", 99), field: "interval_ms"},
		{name: "interval 60001", data: edit(t, gatewayExample, "interval_ms", 60001), field: "interval_ms"},
		{name: "version too long", data: edit(t, gatewayExample, "version", long), field: "version"},
		{name: "nats_server too long", data: edit(t, gatewayExample, "nats_server", long), field: "nats_server"},
		{name: "17 primaries", data: edit(t, gatewayExample, "primary", ids(17)), field: "primary"},
		{name: "primary invalid id", data: edit(t, gatewayExample, "primary", []any{"a*"}), field: "primary"},
		{name: "primary empty id", data: edit(t, gatewayExample, "primary", []any{""}), field: "primary"},
		{name: "primary twice", data: edit(t, gatewayExample, "primary", []any{"a", "a"}), field: "primary"},
		{name: "inflight negative", data: edit(t, gatewayExample, "inflight", -1), field: "inflight"},
		{name: "inflight 2^31", data: edit(t, gatewayExample, "inflight", raw("2147483648")), field: "inflight"},
		{name: "control_revision negative", data: edit(t, gatewayExample, "control_revision", -1), field: "control_revision"},
		{name: "control_revision 2^53", data: edit(t, gatewayExample, "control_revision", raw("9007199254740992")), field: "control_revision"},
		{name: "control_revision fraction", data: edit(t, gatewayExample, "control_revision", raw("1.5")), field: "control_revision"},

		// case variants never stand for the field; duplicates: the last wins, as in encoding/json
		{name: "ID does not override id", data: []byte(strings.Replace(gatewayExample, `"id":"gw1"`, `"ID":"gw2","id":"gw1","Id":"x y"`, 1)),
			check: func(m *GatewayMessage) bool { return m.ID == "gw1" }},
		{name: "only ID", data: []byte(strings.Replace(gatewayExample, `"id":"gw1"`, `"ID":"gw1"`, 1)), field: "id"},
		{name: "Kind does not stand for kind", data: []byte(strings.Replace(gatewayExample, `"kind":"gateway"`, `"Kind":"gateway"`, 1)), field: "kind"},
		{name: "STATE does not override state", data: []byte(strings.Replace(gatewayExample, `"state":"active"`, `"state":"active","STATE":"leaving"`, 1)),
			check: func(m *GatewayMessage) bool { return m.State == GatewayStateActive }},
		{name: "Primary ignored", data: []byte(strings.Replace(gatewayExample, `"primary":["app1","app2"]`, `"primary":["app1"],"Primary":["evil"]`, 1)),
			check: func(m *GatewayMessage) bool { return reflect.DeepEqual(m.Primary, []string{"app1"}) }},
		{name: "duplicate state: last wins", data: []byte(strings.Replace(gatewayExample, `"state":"active"`, `"state":"active","state":"leaving"`, 1)),
			check: func(m *GatewayMessage) bool { return m.State == GatewayStateLeaving }},
		{name: "duplicate id: last must match subject", data: []byte(strings.Replace(gatewayExample, `"id":"gw1"`, `"id":"gw1","id":"gw2"`, 1)), field: "id"},
		{name: "escaped key is the key", data: []byte(strings.Replace(gatewayExample, `"id":"gw1"`, `"\u0069d":"gw1"`, 1)),
			check: func(m *GatewayMessage) bool { return m.ID == "gw1" }},

		// the payload as a whole
		{name: "too large", data: edit(t, gatewayExample, "pad", strings.Repeat("x", MaxPayload)), field: "payload"},
		{name: "invalid UTF-8", data: []byte(strings.Replace(gatewayExample, "v1.2.0", "v1\xff", 1)), field: "payload"},
		{name: "not an object", data: []byte(`[1]`), field: "json"},
		{name: "null", data: []byte(`null`), field: "json"},
		{name: "truncated", data: []byte(gatewayExample[:40]), field: "json"},
		{name: "trailing garbage", data: []byte(gatewayExample + " x"), field: "json"},
		{name: "empty", data: nil, field: "json"},

		// the other kinds of messages
		{name: "instance heartbeat on a gw subject", data: []byte(strings.Replace(protocolExample, `"app1"`, `"gw1"`, 1)), field: "kind"},
		{name: "observation on a gw subject", data: []byte(observationExample), field: "kind"},

		// subjects
		{name: "obs subject", subject: obsSubject, data: []byte(gatewayExample), field: "subject"},
		{name: "hb subject", subject: "cx.ha.hb.gw1", data: []byte(gatewayExample), field: "subject"},
		{name: "other prefix", subject: "cx.hb.gw.gw1", data: []byte(gatewayExample), field: "subject"},
		{name: "dotted id", subject: "cx.ha.gw.gw1.x", data: []byte(gatewayExample), field: "subject"},
		{name: "wildcard id", subject: "cx.ha.gw.*", data: []byte(gatewayExample), field: "subject"},
		{name: "full wildcard id", subject: "cx.ha.gw.>", data: []byte(gatewayExample), field: "subject"},
		{name: "empty id", subject: "cx.ha.gw.", data: []byte(gatewayExample), field: "subject"},
		{name: "id too long", subject: "cx.ha.gw." + strings.Repeat("a", 65), data: []byte(gatewayExample), field: "subject"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			subject := c.subject
			if subject == "" {
				subject = gwSubject
			}
			m, err := DecodeGateway(DefaultPrefix, subject, c.data)
			checkDecodeResult(t, err, c.field)
			if err == nil && c.check != nil && !c.check(m) {
				t.Fatalf("decoded as %+v", m)
			}
		})
	}
}

func ids(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = fmt.Sprintf("app%d", i)
	}
	return out
}

// checkDecodeResult fails t unless err refuses field, or accepts for "".
func checkDecodeResult(t *testing.T, err error, field string) {
	t.Helper()
	if field == "" {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("accepted or not an *Error (%v), want a refusal of %s", err, field)
	}
	if e.Field != field {
		t.Fatalf("refused for %s (%v), want %s", e.Field, err, field)
	}
}

func TestDecodeObservation(t *testing.T) {
	entry := func(id, started string) map[string]any { return map[string]any{"id": id, "started_at": started} }
	cases := []struct {
		name    string
		subject string // default obsSubject
		data    []byte
		field   string
		check   func(*Observation) bool
	}{
		{name: "example", data: []byte(observationExample), check: func(o *Observation) bool {
			return o.Gateway == "gw1" && o.Seq == 3 && len(o.Failed) == 1 && o.Failed[0].ID == "app1" &&
				o.Failed[0].StartedAt.Equal(time.Date(2026, 11, 25, 20, 0, 0, 123456789, time.UTC))
		}},
		{name: "32 failures", data: edit(t, observationExample, "failed", failedN(32))},
		{name: "unknown fields ignored", data: edit(t, observationExample, "x", 1, "failed", []any{map[string]any{"id": "a", "started_at": "2026-11-25T20:00:00Z", "y": 2}})},

		{name: "proto missing", data: edit(t, observationExample, "proto", nil), field: "proto"},
		{name: "kind missing", data: edit(t, observationExample, "kind", nil), field: "kind"},
		{name: "gateway missing", data: edit(t, observationExample, "gateway", nil), field: "gateway"},
		{name: "started_at missing", data: edit(t, observationExample, "started_at", nil), field: "started_at"},
		{name: "seq missing", data: edit(t, observationExample, "seq", nil), field: "seq"},
		{name: "failed missing", data: edit(t, observationExample, "failed", nil), field: "failed"},
		{name: "failed null", data: edit(t, observationExample, "failed", raw("null")), field: "failed"},

		{name: "gateway number", data: edit(t, observationExample, "gateway", 1), field: "gateway"},
		{name: "started_at bool", data: edit(t, observationExample, "started_at", true), field: "started_at"},
		{name: "seq float", data: edit(t, observationExample, "seq", raw("3.0")), field: "seq"},
		{name: "failed object", data: edit(t, observationExample, "failed", map[string]any{}), field: "failed"},
		{name: "failed entry string", data: edit(t, observationExample, "failed", []any{"app1"}), field: "failed"},
		{name: "failed entry null", data: edit(t, observationExample, "failed", []any{nil}), field: "failed"},
		{name: "failed entry id number", data: edit(t, observationExample, "failed", []any{map[string]any{"id": 1, "started_at": "2026-11-25T20:00:00Z"}}), field: "failed"},

		{name: "kind gateway", data: edit(t, observationExample, "kind", "gateway"), field: "kind"},
		{name: "gateway other than subject", data: edit(t, observationExample, "gateway", "gw2"), field: "gateway"},
		{name: "seq 0", data: edit(t, observationExample, "seq", 0), field: "seq"},
		{name: "started_at bad", data: edit(t, observationExample, "started_at", "yesterday"), field: "started_at"},
		{name: "no failures", data: edit(t, observationExample, "failed", []any{}), field: "failed"},
		{name: "33 failures", data: edit(t, observationExample, "failed", failedN(33)), field: "failed"},
		{name: "failed entry without id", data: edit(t, observationExample, "failed", []any{map[string]any{"started_at": "2026-11-25T20:00:00Z"}}), field: "failed"},
		{name: "failed entry invalid id", data: edit(t, observationExample, "failed", []any{entry("a.b", "2026-11-25T20:00:00Z")}), field: "failed"},
		{name: "failed entry without started_at", data: edit(t, observationExample, "failed", []any{map[string]any{"id": "a"}}), field: "failed"},
		{name: "failed entry bad started_at", data: edit(t, observationExample, "failed", []any{entry("a", "2026-11-25")}), field: "failed"},
		{name: "failed entry ID only", data: edit(t, observationExample, "failed", []any{map[string]any{"ID": "a", "started_at": "2026-11-25T20:00:00Z"}}), field: "failed"},
		{name: "failed entry ID ignored", data: edit(t, observationExample, "failed", []any{map[string]any{"ID": "evil", "id": "a", "started_at": "2026-11-25T20:00:00Z"}}),
			check: func(o *Observation) bool { return o.Failed[0].ID == "a" }},
		{name: "Gateway does not override gateway", data: []byte(strings.Replace(observationExample, `"gateway":"gw1"`, `"Gateway":"gw2","gateway":"gw1","GATEWAY":"x"`, 1)),
			check: func(o *Observation) bool { return o.Gateway == "gw1" }},

		{name: "too large", data: edit(t, observationExample, "pad", strings.Repeat("x", MaxPayload)), field: "payload"},
		{name: "invalid UTF-8", data: []byte(strings.Replace(observationExample, "gw1", "gw1\xc3", 1)), field: "payload"},
		{name: "trailing garbage", data: []byte(observationExample + "}"), field: "json"},

		{name: "gateway heartbeat on the obs subject", data: []byte(gatewayExample), field: "kind"},
		{name: "instance heartbeat on the obs subject", data: []byte(strings.Replace(protocolExample, `"app1"`, `"gw1"`, 1)), field: "kind"},
		{name: "gw subject", subject: gwSubject, data: []byte(observationExample), field: "subject"},
		{name: "dotted id", subject: "cx.ha.obs.a.gw1", data: []byte(observationExample), field: "subject"},
		{name: "wildcard id", subject: "cx.ha.obs.>", data: []byte(observationExample), field: "subject"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			subject := c.subject
			if subject == "" {
				subject = obsSubject
			}
			o, err := DecodeObservation(DefaultPrefix, subject, c.data)
			checkDecodeResult(t, err, c.field)
			if err == nil && c.check != nil && !c.check(o) {
				t.Fatalf("decoded as %+v", o)
			}
		})
	}
}

// A gateway heartbeat is never an instance heartbeat: on an hb subject it
// lacks the url every instance heartbeat has.
func TestGatewayHeartbeatIsNoInstanceHeartbeat(t *testing.T) {
	data := []byte(strings.Replace(gatewayExample, `"gw1"`, `"app1"`, 1))
	_, err := Decode(DefaultPrefix, HeartbeatSubject(DefaultPrefix, "app1"), data)
	checkDecodeResult(t, err, "url")
	obs := []byte(strings.Replace(observationExample, `"gw1"`, `"app1"`, 1))
	if _, err := Decode(DefaultPrefix, HeartbeatSubject(DefaultPrefix, "app1"), obs); err == nil {
		t.Fatal("an observation decoded as an instance heartbeat")
	}
}

// The cost of a hostile observation is bounded by its 4 KiB: an array of
// more tiny entries than allowed is refused without decoding any entry,
// and costs no more than a valid observation of the same size.
func TestObservationFloodOfTinyEntries(t *testing.T) {
	head := `{"proto":1,"kind":"observation","gateway":"gw1","started_at":"2026-11-25T21:00:00Z","seq":1,"failed":[`
	n := (MaxPayload - len(head) - 2) / 3
	data := []byte(head + strings.TrimSuffix(strings.Repeat("{},", n), ",") + "]}")
	if len(data) > MaxPayload || n < 1000 {
		t.Fatalf("%d bytes, %d entries", len(data), n)
	}
	_, err := DecodeObservation(DefaultPrefix, obsSubject, data)
	checkDecodeResult(t, err, "failed")
	if !strings.Contains(err.Error(), fmt.Sprintf("%d entries", n)) {
		t.Fatalf("error %v does not count the entries", err)
	}
	allocs := testing.AllocsPerRun(20, func() { _, _ = DecodeObservation(DefaultPrefix, obsSubject, data) })
	valid := edit(t, observationExample, "failed", failedN(MaxObservedFailures))
	validAllocs := testing.AllocsPerRun(20, func() { _, _ = DecodeObservation(DefaultPrefix, obsSubject, valid) })
	t.Logf("%d tiny entries: %.0f allocations; %d valid failures (%d bytes): %.0f", n, allocs, MaxObservedFailures, len(valid), validAllocs)
	// One map per entry would cost more than n allocations.
	if allocs > float64(n)/4 {
		t.Fatalf("%.0f allocations to refuse %d tiny entries: the entries were decoded one by one", allocs, n)
	}
}

func TestEncodeGatewayRoundTrip(t *testing.T) {
	m, err := DecodeGateway(DefaultPrefix, gwSubject, []byte(gatewayExample))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := EncodeGateway(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := DecodeGateway(DefaultPrefix, gwSubject, enc)
	if err != nil || !sameGateway(m, m2) {
		t.Fatalf("round trip: %v\n%+v\n%+v", err, m, m2)
	}
	o, err := DecodeObservation(DefaultPrefix, obsSubject, []byte(observationExample))
	if err != nil {
		t.Fatal(err)
	}
	enc, err = EncodeGateway(o)
	if err != nil {
		t.Fatal(err)
	}
	o2, err := DecodeObservation(DefaultPrefix, obsSubject, enc)
	if err != nil || !sameObservation(o, o2) {
		t.Fatalf("round trip: %v\n%+v\n%+v", err, o, o2)
	}
}

func sameGateway(a, b *GatewayMessage) bool {
	x, y := *a, *b
	if !x.StartedAt.Equal(y.StartedAt) {
		return false
	}
	x.StartedAt, y.StartedAt = time.Time{}, time.Time{}
	if len(x.Primary) == 0 && len(y.Primary) == 0 {
		x.Primary, y.Primary = nil, nil
	}
	return reflect.DeepEqual(x, y)
}

func sameObservation(a, b *Observation) bool {
	if a.Proto != b.Proto || a.Kind != b.Kind || a.Gateway != b.Gateway || a.Seq != b.Seq ||
		!a.StartedAt.Equal(b.StartedAt) || len(a.Failed) != len(b.Failed) {
		return false
	}
	for i := range a.Failed {
		if a.Failed[i].ID != b.Failed[i].ID || !a.Failed[i].StartedAt.Equal(b.Failed[i].StartedAt) {
			return false
		}
	}
	return true
}

// A primary list of thousands of short ids is refused before any id is
// decoded.
func TestGatewayFloodOfPrimaries(t *testing.T) {
	head := strings.Replace(gatewayExample, `"primary":["app1","app2"]`, `"primary":[`, 1)
	head, tail, _ := strings.Cut(head, `"primary":[`)
	head += `"primary":[`
	n := (MaxPayload - len(head) - len(tail) - 2) / 4
	data := []byte(head + strings.TrimSuffix(strings.Repeat(`"a",`, n), ",") + "]" + tail)
	if len(data) > MaxPayload || n < 900 {
		t.Fatalf("%d bytes, %d ids", len(data), n)
	}
	_, err := DecodeGateway(DefaultPrefix, gwSubject, data)
	checkDecodeResult(t, err, "primary")
	allocs := testing.AllocsPerRun(20, func() { _, _ = DecodeGateway(DefaultPrefix, gwSubject, data) })
	t.Logf("%d ids refused with %.0f allocations", n, allocs)
	if allocs > float64(n)/4 {
		t.Fatalf("%.0f allocations to refuse %d ids: they were decoded one by one", allocs, n)
	}
}

func BenchmarkDecodeGateway(b *testing.B) {
	data := []byte(gatewayExample)
	for b.Loop() {
		if _, err := DecodeGateway(DefaultPrefix, gwSubject, data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeObservation(b *testing.B) {
	for name, data := range map[string][]byte{
		"1 failure":   []byte(observationExample),
		"32 failures": edit(b, observationExample, "failed", failedN(MaxObservedFailures)),
		"hostile 4KiB of tiny entries": []byte(`{"proto":1,"kind":"observation","gateway":"gw1","started_at":"2026-11-25T21:00:00Z","seq":1,"failed":[` +
			strings.TrimSuffix(strings.Repeat("{},", 1300), ",") + "]}"),
	} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				_, _ = DecodeObservation(DefaultPrefix, obsSubject, data)
			}
		})
	}
}
