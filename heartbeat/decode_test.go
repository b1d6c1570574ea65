package heartbeat

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// protocolExample is PROTOCOL.md's example with started_at in whole seconds
// (protocol_doc_test.go reads the doc's own example).
const protocolExample = `{"proto":1,"id":"app1","url":"http://10.0.0.11:8080","state":"ready",
     "started_at":"2026-11-25T21:00:00Z","seq":42,"interval_ms":1000,
     "version":"2026.4.1","priority":0,"leader_roles":["email-dispatcher"],
     "meta":{"license":"ok"}}`

const exampleSubject = "cx.ha.hb.app1"

// del marks a field to remove in payload.
type del struct{}

// payload returns the protocol example with the given fields set (a
// json.RawMessage is used verbatim) or, for del{}, removed.
func payload(t testing.TB, kv ...any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(protocolExample), &m); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(kv); i += 2 {
		k := kv[i].(string)
		if _, ok := kv[i+1].(del); ok {
			delete(m, k)
		} else {
			m[k] = kv[i+1]
		}
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

func roles(n, length int) []string {
	r := make([]string, n)
	for i := range r {
		r[i] = fmt.Sprintf("%0*d", length, i)
	}
	return r
}

func meta(n, keyLen, valLen int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("%0*d", keyLen, i)] = strings.Repeat("v", valLen)
	}
	return m
}

func TestDecode(t *testing.T) {
	id64 := strings.Repeat("a", 64)
	tests := []struct {
		name    string
		subject string // default exampleSubject
		data    []byte
		field   string // "" means valid
	}{
		{name: "protocol example", data: []byte(protocolExample)},
		{name: "bad json", data: []byte(`{"proto":1,`), field: "json"},
		{name: "empty", data: nil, field: "json"},
		{name: "array", data: []byte(`[1]`), field: "json"},
		{name: "null", data: []byte(`null`), field: "json"},
		{name: "trailing garbage", data: append([]byte(protocolExample), " x"...), field: "json"},

		{name: "missing proto", data: payload(t, "proto", del{}), field: "proto"},
		{name: "missing id", data: payload(t, "id", del{}), field: "id"},
		{name: "missing url", data: payload(t, "url", del{}), field: "url"},
		{name: "missing state", data: payload(t, "state", del{}), field: "state"},
		{name: "missing started_at", data: payload(t, "started_at", del{}), field: "started_at"},
		{name: "missing seq", data: payload(t, "seq", del{}), field: "seq"},
		{name: "missing interval_ms", data: payload(t, "interval_ms", del{}), field: "interval_ms"},
		{name: "null proto", data: payload(t, "proto", nil), field: "proto"},
		{name: "null id", data: payload(t, "id", nil), field: "id"},
		{name: "optional fields absent", data: payload(t, "version", del{}, "priority", del{}, "leader_roles", del{}, "meta", del{})},
		{name: "optional fields null", data: payload(t, "version", nil, "priority", nil, "leader_roles", nil, "meta", nil)},

		{name: "proto string", data: payload(t, "proto", "1"), field: "proto"},
		{name: "proto 1.0", data: payload(t, "proto", raw("1.0")), field: "proto"},
		{name: "proto 1e0", data: payload(t, "proto", raw("1e0")), field: "proto"},
		{name: "proto 2", data: payload(t, "proto", 2), field: "proto"},
		{name: "seq string", data: payload(t, "seq", "42"), field: "seq"},
		{name: "seq 42.0", data: payload(t, "seq", raw("42.0")), field: "seq"},
		{name: "interval 1e3", data: payload(t, "interval_ms", raw("1e3")), field: "interval_ms"},
		{name: "priority 1.0", data: payload(t, "priority", raw("1.0")), field: "priority"},
		{name: "priority string", data: payload(t, "priority", "1"), field: "priority"},
		{name: "id number", data: payload(t, "id", 1), field: "id"},
		{name: "url number", data: payload(t, "url", 1), field: "url"},
		{name: "state bool", data: payload(t, "state", true), field: "state"},
		{name: "version number", data: payload(t, "version", 1), field: "version"},
		{name: "leader_roles string", data: payload(t, "leader_roles", "a"), field: "leader_roles"},
		{name: "leader_roles of numbers", data: payload(t, "leader_roles", []int{1}), field: "leader_roles"},
		{name: "meta array", data: payload(t, "meta", []string{"a"}), field: "meta"},
		{name: "meta number value", data: payload(t, "meta", map[string]int{"a": 1}), field: "meta"},

		{name: "id subject mismatch", data: payload(t, "id", "app2"), field: "id"},
		{name: "subject other prefix", subject: "other.hb.app1", data: []byte(protocolExample), field: "subject"},
		{name: "subject extra token", subject: "cx.ha.hb.app1.x", data: []byte(protocolExample), field: "subject"},
		{name: "subject bad id", subject: "cx.ha.hb.app!1", data: payload(t, "id", "app!1"), field: "subject"},
		{name: "id 64", subject: "cx.ha.hb." + id64, data: payload(t, "id", id64)},
		{name: "id 65", subject: "cx.ha.hb." + id64 + "a", data: payload(t, "id", id64+"a"), field: "subject"},

		{name: "url path", data: payload(t, "url", "http://10.0.0.11:8080/app"), field: "url"},
		{name: "url query", data: payload(t, "url", "http://10.0.0.11:8080/?a=1"), field: "url"},
		{name: "url empty query", data: payload(t, "url", "http://10.0.0.11:8080?"), field: "url"},
		{name: "url fragment", data: payload(t, "url", "http://10.0.0.11:8080#x"), field: "url"},
		{name: "url user info", data: payload(t, "url", "http://u:p@10.0.0.11:8080"), field: "url"},
		{name: "url no port", data: payload(t, "url", "http://10.0.0.11"), field: "url"},
		{name: "url empty port", data: payload(t, "url", "http://10.0.0.11:"), field: "url"},
		{name: "url ftp", data: payload(t, "url", "ftp://10.0.0.11:21"), field: "url"},
		{name: "url no scheme", data: payload(t, "url", "10.0.0.11:8080"), field: "url"},
		{name: "url port 0", data: payload(t, "url", "http://10.0.0.11:0"), field: "url"},
		{name: "url port 65536", data: payload(t, "url", "http://10.0.0.11:65536"), field: "url"},
		{name: "url no host", data: payload(t, "url", "http://:8080"), field: "url"},
		{name: "url bad host", data: payload(t, "url", "http://a_b!:8080"), field: "url"},
		{name: "url ipv4 in brackets", data: payload(t, "url", "http://[10.0.0.11]:8080"), field: "url"},
		{name: "url ipv6 zone", data: payload(t, "url", "http://[fe80::1%25eth0]:8080"), field: "url"},
		{name: "url trailing slash", data: payload(t, "url", "http://10.0.0.11:8080/")},
		{name: "url https", data: payload(t, "url", "https://10.0.0.11:8443")},
		{name: "url ipv6", data: payload(t, "url", "http://[2001:db8::11]:8080")},
		{name: "url dns name", data: payload(t, "url", "https://app1.svc.cluster.local:8443")},

		{name: "state sleeping", data: payload(t, "state", "sleeping"), field: "state"},
		{name: "state upper case", data: payload(t, "state", "READY"), field: "state"},
		{name: "state draining", data: payload(t, "state", "draining")},
		{name: "state leaving", data: payload(t, "state", "leaving")},

		{name: "started_at words", data: payload(t, "started_at", "yesterday"), field: "started_at"},
		{name: "started_at space", data: payload(t, "started_at", "2026-11-25 21:00:00Z"), field: "started_at"},
		{name: "started_at no zone", data: payload(t, "started_at", "2026-11-25T21:00:00"), field: "started_at"},
		{name: "started_at comma", data: payload(t, "started_at", "2026-11-25T21:00:00,5Z"), field: "started_at"},
		{name: "started_at offset 24h", data: payload(t, "started_at", "2026-11-25T21:00:00+24:00"), field: "started_at"},
		{name: "started_at number", data: payload(t, "started_at", 1), field: "started_at"},
		{name: "started_at nanoseconds", data: payload(t, "started_at", "2026-11-25T21:00:00.123456789Z")},
		{name: "started_at offset", data: payload(t, "started_at", "2026-11-25T22:00:00.5+01:00")},

		{name: "seq 0", data: payload(t, "seq", 0), field: "seq"},
		{name: "seq -1", data: payload(t, "seq", -1), field: "seq"},
		{name: "seq 2^53", data: payload(t, "seq", raw("9007199254740992")), field: "seq"},
		{name: "seq 2^64", data: payload(t, "seq", raw("18446744073709551616")), field: "seq"},
		{name: "seq 2^53-1", data: payload(t, "seq", raw("9007199254740991"))},
		{name: "interval 99", data: payload(t, "interval_ms", 99), field: "interval_ms"},
		{name: "interval 60001", data: payload(t, "interval_ms", 60001), field: "interval_ms"},
		{name: "interval 100", data: payload(t, "interval_ms", 100)},
		{name: "interval 60000", data: payload(t, "interval_ms", 60000)},
		{name: "priority 1001", data: payload(t, "priority", 1001), field: "priority"},
		{name: "priority -1001", data: payload(t, "priority", -1001), field: "priority"},
		{name: "priority -1000", data: payload(t, "priority", -1000)},

		{name: "version 65", data: payload(t, "version", strings.Repeat("v", 65)), field: "version"},
		{name: "version 64 runes", data: payload(t, "version", strings.Repeat("é", 64))},
		{name: "17 leader roles", data: payload(t, "leader_roles", roles(17, 8)), field: "leader_roles"},
		{name: "16 leader roles", data: payload(t, "leader_roles", roles(16, 64))},
		{name: "empty leader role", data: payload(t, "leader_roles", []string{""}), field: "leader_roles"},
		{name: "65-char leader role", data: payload(t, "leader_roles", roles(1, 65)), field: "leader_roles"},
		{name: "meta 17 entries", data: payload(t, "meta", meta(17, 2, 1)), field: "meta"},
		{name: "meta 16 entries", data: payload(t, "meta", meta(16, 64, 100))},
		{name: "meta long key", data: payload(t, "meta", meta(1, 65, 1)), field: "meta"},
		{name: "meta long value", data: payload(t, "meta", meta(1, 1, 257)), field: "meta"},

		{name: "payload 10 KiB", data: payload(t, "x", strings.Repeat("x", 10<<10)), field: "payload"},
		{name: "payload 4096", data: padTo(t, MaxPayload)},
		{name: "payload 4097", data: padTo(t, MaxPayload+1), field: "payload"},
		{name: "invalid utf-8", data: []byte(strings.Replace(protocolExample, "2026.4.1", "2026.4.\xff", 1)), field: "payload"},

		{name: "unknown fields ignored", data: payload(t, "future", map[string]any{"x": []any{1.5, "y", nil}}, "proto2", "z")},
		{name: "keys are case-sensitive", data: payload(t, "ID", "other", "Url", "ftp://x", "STATE", "sleeping")},
		{name: "only a wrong-case key", data: payload(t, "url", del{}, "URL", "http://10.0.0.11:8080"), field: "url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			subject := tt.subject
			if subject == "" {
				subject = exampleSubject
			}
			m, err := Decode(DefaultPrefix, subject, tt.data)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Decode: %v\npayload: %s", err, tt.data)
				}
				if m.ID != strings.TrimPrefix(subject, "cx.ha.hb.") || !m.State.Valid() {
					t.Errorf("decoded %+v", m)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Decode: got %v (%T), want *Error for %s\npayload: %.300s", err, err, tt.field, tt.data)
			}
			if e.Field != tt.field {
				t.Errorf("Decode: field %q (%v), want %q", e.Field, err, tt.field)
			}
			if m != nil {
				t.Errorf("Decode returned a message with an error")
			}
		})
	}
}

// padTo returns the example grown to exactly n bytes with an unknown field.
func padTo(t *testing.T, n int) []byte {
	t.Helper()
	base := len(payload(t, "pad", ""))
	data := payload(t, "pad", strings.Repeat("p", n-base))
	if len(data) != n {
		t.Fatalf("padTo: %d bytes, want %d", len(data), n)
	}
	return data
}

func TestDecodeExampleFields(t *testing.T) {
	m, err := Decode(DefaultPrefix, exampleSubject, []byte(protocolExample))
	if err != nil {
		t.Fatal(err)
	}
	want := &Message{
		Proto: 1, ID: "app1", URL: "http://10.0.0.11:8080", State: StateReady,
		StartedAt:  time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC),
		Seq:        42,
		IntervalMS: 1000, Version: "2026.4.1", Priority: 0,
		LeaderRoles: []string{"email-dispatcher"},
		Meta:        map[string]string{"license": "ok"},
	}
	if !sameMessage(m, want) {
		t.Errorf("got %+v\nwant %+v", m, want)
	}
	if m.Interval() != time.Second {
		t.Errorf("Interval() = %v", m.Interval())
	}
}

func TestEncodeParseRoundTrip(t *testing.T) {
	msgs := []*Message{
		{
			Proto: 1, ID: "a-B_9", URL: "https://[2001:db8::1]:8443/", State: StateDraining,
			StartedAt: time.Date(2026, 11, 25, 21, 0, 0, 123456789, time.UTC),
			Seq:       MaxSeq, IntervalMS: MinIntervalMS, Version: "1.2.3 <beta> & \"q\"",
			Priority: MinPriority, LeaderRoles: roles(MaxRoles, 10), Meta: meta(MaxMetaEntries, 10, 100),
		},
		{
			Proto: 1, ID: "x", URL: "http://h:1", State: StateLeaving,
			StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("", -5*3600)),
			Seq:       1, IntervalMS: MaxIntervalMS,
		},
	}
	for _, m := range msgs {
		data, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(data)
		if err != nil {
			t.Fatalf("Parse(Encode(m)): %v\n%s", err, data)
		}
		if !sameMessage(got, m) {
			t.Errorf("round trip:\ngot  %+v\nwant %+v", got, m)
		}
	}
}

func TestURLHelpers(t *testing.T) {
	if got := HostPort("http://[2001:db8::1]:8080/"); got != "[2001:db8::1]:8080" {
		t.Errorf("HostPort = %q", got)
	}
	if a, ok := IPHost("http://10.0.0.11:8080"); !ok || a.String() != "10.0.0.11" {
		t.Errorf("IPHost = %v, %v", a, ok)
	}
	if _, ok := IPHost("http://app1.local:8080"); ok {
		t.Error("IPHost of a DNS name")
	}
}

// sameMessage compares messages as the protocol does: times as instants
// (and offsets), absent and empty lists and maps alike.
func sameMessage(a, b *Message) bool {
	_, offA := a.StartedAt.Zone()
	_, offB := b.StartedAt.Zone()
	return a.Proto == b.Proto && a.ID == b.ID && a.URL == b.URL && a.State == b.State &&
		a.StartedAt.Equal(b.StartedAt) && offA == offB && a.Seq == b.Seq &&
		a.IntervalMS == b.IntervalMS && a.Version == b.Version && a.Priority == b.Priority &&
		slices.Equal(a.LeaderRoles, b.LeaderRoles) && maps.Equal(a.Meta, b.Meta)
}

func TestParseID(t *testing.T) {
	for _, id := range []string{"app.1", "app 1", "app/1", "ä", "", strings.Repeat("a", 65)} {
		_, err := Parse(payload(t, "id", id))
		var e *Error
		if !errors.As(err, &e) || e.Field != "id" {
			t.Errorf("Parse with id %q: %v, want an id error", id, err)
		}
	}
}
