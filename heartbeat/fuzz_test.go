package heartbeat

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// errorFields are the values Error.Field may take.
var errorFields = map[string]bool{
	"payload": true, "json": true, "subject": true, "proto": true, "id": true, "url": true,
	"state": true, "started_at": true, "seq": true, "interval_ms": true, "version": true,
	"priority": true, "leader_roles": true, "meta": true,
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(protocolExample))
	f.Add(payload(f, "url", "http://[2001:db8::11]:8080/", "started_at", "2026-11-25T22:00:00.123+01:00", "state", "leaving"))
	f.Add(payload(f, "meta", meta(16, 4, 200), "leader_roles", roles(16, 20), "version", "<&>\u2028"))
	f.Add(payload(f, "future", []any{1, "x", nil}, "Url", "x", "priority", nil))
	f.Add(payload(f, "proto", raw("1.0")))
	f.Add(payload(f, "seq", raw("9007199254740992")))
	f.Add(payload(f, "url", "http://u@h:80/x?y#z"))
	f.Add([]byte(`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00,5+24:00","seq":1,"interval_ms":100}`))
	f.Add([]byte(`{"proto":1,"id":"app1"`))
	f.Add([]byte("\xff"))
	f.Add([]byte(`{"proto":1,"ID":"x","id":"app1","Url":"http://h:1","url":"http://h:2","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":1,"interval_ms":100}`))
	f.Add([]byte(`{"proto":1,"\u0069d":"app1","url":"http://h:2","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":1,"interval_ms":100}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFastPathAgrees(t, data)
		m, err := Decode(DefaultPrefix, exampleSubject, data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !errorFields[e.Field] || e.Reason == "" {
				t.Fatalf("Decode error %#v (%T) is not an *Error with a known field", err, err)
			}
			return
		}
		checkLimits(t, m)
		if m.ID != "app1" {
			t.Fatalf("id %q does not match the subject", m.ID)
		}
		enc, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode of a decoded message: %v", err)
		}
		m2, err := Parse(enc)
		if len(enc) > MaxPayload {
			// Encoding may add "priority":0 and escape U+2028/U+2029.
			growth := len(`,"priority":0`) + 3*countSeparators(m)
			var e *Error
			if len(enc) > len(data)+growth || !errors.As(err, &e) || e.Field != "payload" {
				t.Fatalf("%d-byte payload re-encoded to %d bytes: %v\n%s", len(data), len(enc), err, enc)
			}
			return
		}
		if err != nil {
			t.Fatalf("Parse(Encode(m)): %v\n%s", err, enc)
		}
		if !sameMessage(m, m2) {
			t.Fatalf("round trip:\ngot  %+v\nwant %+v", m2, m)
		}
	})
}

func countSeparators(m *Message) int {
	s := m.Version + strings.Join(m.LeaderRoles, "")
	for k, v := range m.Meta {
		s += k + v
	}
	return strings.Count(s, "\u2028") + strings.Count(s, "\u2029")
}

// checkLimits fails t unless m respects every limit of protocol version 1.
func checkLimits(t *testing.T, m *Message) {
	t.Helper()
	fail := func(what string) { t.Fatalf("decoded message breaks a limit: %s: %+v", what, m) }
	if m.Proto != Proto {
		fail("proto")
	}
	if !ValidID(m.ID) {
		fail("id")
	}
	if ValidURL(m.URL) != nil || HostPort(m.URL) == "" || strings.Contains(m.URL, "@") {
		fail("url")
	}
	if !m.State.Valid() {
		fail("state")
	}
	if _, err := m.StartedAt.MarshalJSON(); err != nil {
		fail("started_at not encodable")
	}
	if m.Seq < 1 || m.Seq > MaxSeq {
		fail("seq")
	}
	if m.IntervalMS < MinIntervalMS || m.IntervalMS > MaxIntervalMS {
		fail("interval_ms")
	}
	if m.Priority < MinPriority || m.Priority > MaxPriority {
		fail("priority")
	}
	if utf8.RuneCountInString(m.Version) > MaxVersionLen {
		fail("version")
	}
	if len(m.LeaderRoles) > MaxRoles {
		fail("leader_roles count")
	}
	for _, r := range m.LeaderRoles {
		if n := utf8.RuneCountInString(r); n < 1 || n > MaxRoleLen {
			fail("leader_roles length")
		}
	}
	if len(m.Meta) > MaxMetaEntries {
		fail("meta count")
	}
	for k, v := range m.Meta {
		if utf8.RuneCountInString(k) > MaxMetaKeyLen || utf8.RuneCountInString(v) > MaxMetaValLen {
			fail("meta length")
		}
	}
}

// checkFastPathAgrees: the one-pass decoding gives what the exact decoding
// gives, whenever exactKeys lets it run.
func checkFastPathAgrees(t *testing.T, data []byte) {
	if !exactKeys(data) {
		return
	}
	var fast, exact wire
	if json.Unmarshal(data, &fast) != nil {
		return
	}
	if err := exact.decodeExact(data); err != nil {
		t.Fatalf("fast path decoded %q, the exact path refused it: %v", data, err)
	}
	if !reflect.DeepEqual(fast, exact) {
		t.Fatalf("fast path %+v, exact path %+v for %q", fast, exact, data)
	}
}
