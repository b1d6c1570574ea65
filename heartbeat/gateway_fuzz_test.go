package heartbeat

import (
	"errors"
	"testing"
	"unicode/utf8"
)

// gatewayErrorFields are the values Error.Field may take for gateway
// messages.
var gatewayErrorFields = map[string]bool{
	"payload": true, "json": true, "subject": true, "proto": true, "kind": true, "id": true, "state": true,
	"started_at": true, "seq": true, "interval_ms": true, "version": true, "nats_server": true,
	"primary": true, "inflight": true, "control": true, "gateway": true, "failed": true,
}

func checkGatewayError(t *testing.T, err error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || !gatewayErrorFields[e.Field] || e.Reason == "" {
		t.Fatalf("error %#v (%T) is not an *Error with a known field", err, err)
	}
}

func FuzzDecodeGateway(f *testing.F) {
	f.Add(gwSubject, []byte(gatewayExample))
	f.Add(gwSubject, edit(f, gatewayExample, "state", "leaving", "primary", ids(16), "started_at", "2026-11-25T22:00:00.123+05:30"))
	f.Add(gwSubject, edit(f, gatewayExample, "version", "<&>\u2028", "nats_server", "\u00e9", "primary", nil))
	f.Add(gwSubject, []byte(`{"proto":1,"kind":"gateway","ID":"x","id":"gw1","state":"active","started_at":"2026-11-25T21:00:00Z","seq":1,"interval_ms":100,"Primary":["x"]}`))
	f.Add(gwSubject, []byte(observationExample))
	f.Add("cx.ha.gw.*", []byte(gatewayExample))
	f.Add(gwSubject, []byte("\xff"))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		m, err := DecodeGateway(DefaultPrefix, subject, data)
		if err != nil {
			checkGatewayError(t, err)
			return
		}
		checkGatewayLimits(t, m)
		if id, _ := GatewayIDFromSubject(DefaultPrefix, subject); m.ID != id {
			t.Fatalf("id %q does not match subject %q", m.ID, subject)
		}
		enc, err := EncodeGateway(m)
		if err != nil {
			t.Fatalf("EncodeGateway of a decoded message: %v", err)
		}
		m2, err := DecodeGateway(DefaultPrefix, subject, enc)
		if len(enc) > MaxPayload {
			// Encoding adds the optional fields and escapes U+2028/U+2029:
			// a payload near the limit may grow past it, and only then.
			if len(data) < MaxPayload-200 {
				t.Fatalf("%d-byte payload re-encoded to %d bytes", len(data), len(enc))
			}
			return
		}
		if err != nil {
			t.Fatalf("decode of the re-encoded message: %v\n%s", err, enc)
		}
		if !sameGateway(m, m2) {
			t.Fatalf("round trip:\ngot  %+v\nwant %+v", m2, m)
		}
	})
}

func checkGatewayLimits(t *testing.T, m *GatewayMessage) {
	t.Helper()
	fail := func(what string) { t.Fatalf("decoded gateway message breaks a limit: %s: %+v", what, m) }
	switch {
	case m.Proto != Proto || m.Kind != KindGateway:
		fail("proto or kind")
	case !ValidID(m.ID):
		fail("id")
	case m.State != GatewayStateActive && m.State != GatewayStateLeaving:
		fail("state")
	case m.Seq < 1 || m.Seq > MaxSeq:
		fail("seq")
	case m.IntervalMS < MinIntervalMS || m.IntervalMS > MaxIntervalMS:
		fail("interval_ms")
	case utf8.RuneCountInString(m.Version) > MaxVersionLen || utf8.RuneCountInString(m.NATSServer) > MaxNATSServerLen:
		fail("version or nats_server")
	case len(m.Primary) > MaxGatewayPrimary:
		fail("primary")
	case m.InFlight < 0 || m.InFlight > MaxGatewayInFlight:
		fail("inflight")
	}
	if _, err := m.StartedAt.MarshalJSON(); err != nil {
		fail("started_at not encodable")
	}
	seen := map[string]bool{}
	for _, id := range m.Primary {
		if !ValidID(id) || seen[id] {
			fail("primary id")
		}
		seen[id] = true
	}
}

func FuzzDecodeObservation(f *testing.F) {
	f.Add(obsSubject, []byte(observationExample))
	f.Add(obsSubject, edit(f, observationExample, "failed", failedN(32)))
	f.Add(obsSubject, edit(f, observationExample, "failed", failedN(33)))
	f.Add(obsSubject, []byte(`{"proto":1,"kind":"observation","gateway":"gw1","started_at":"2026-11-25T21:00:00Z","seq":1,"failed":[{},{},1,null]}`))
	f.Add(obsSubject, []byte(`{"proto":1,"kind":"observation","Gateway":"x","gateway":"gw1","started_at":"2026-11-25T21:00:00+01:30","seq":1,"failed":[{"ID":"y","id":"a","started_at":"2026-11-25T21:00:00.1-02:00"}]}`))
	f.Add(gwSubject, []byte(gatewayExample))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		o, err := DecodeObservation(DefaultPrefix, subject, data)
		if err != nil {
			checkGatewayError(t, err)
			return
		}
		if id, _ := ObservationIDFromSubject(DefaultPrefix, subject); o.Gateway != id || !ValidID(id) {
			t.Fatalf("gateway %q does not match subject %q", o.Gateway, subject)
		}
		if o.Proto != Proto || o.Kind != KindObservation || o.Seq < 1 || o.Seq > MaxSeq ||
			len(o.Failed) < 1 || len(o.Failed) > MaxObservedFailures {
			t.Fatalf("decoded observation breaks a limit: %+v", o)
		}
		for _, f := range o.Failed {
			if !ValidID(f.ID) {
				t.Fatalf("failed id %q", f.ID)
			}
		}
		enc, err := EncodeGateway(o)
		if err != nil {
			t.Fatalf("EncodeGateway of a decoded observation: %v", err)
		}
		o2, err := DecodeObservation(DefaultPrefix, subject, enc)
		if len(enc) > MaxPayload {
			if len(data) < MaxPayload-200 {
				t.Fatalf("%d-byte payload re-encoded to %d bytes", len(data), len(enc))
			}
			return
		}
		if err != nil {
			t.Fatalf("decode of the re-encoded observation: %v\n%s", err, enc)
		}
		if !sameObservation(o, o2) {
			t.Fatalf("round trip:\ngot  %+v\nwant %+v", o2, o)
		}
	})
}
