package heartbeat

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"time"
	"unicode/utf8"
)

// Gateways share the subject prefix of the instances they route to, on
// subjects of their own: PREFIX.gw.ID carries a gateway's heartbeat and
// PREFIX.obs.ID the failures it observed (see PROTOCOL.md, "Gateway
// messages"). Each payload names its kind, so that neither is ever read as
// the other or as an instance heartbeat.

// Kinds of gateway messages, the value of their "kind" field.
const (
	KindGateway     = "gateway"
	KindObservation = "observation"
)

// Limits of gateway messages.
const (
	MaxGatewayPrimary    = 16
	MaxNATSServerLen     = 64
	MaxObservedFailures  = 32
	MaxGatewayInFlight   = 1<<31 - 1
	GatewayStateActive   = "active"
	GatewayStateLeaving  = "leaving"
	DefaultGatewayPeriod = time.Second
)

// GatewayMessage is one gateway heartbeat, published on PREFIX.gw.ID for
// every service (subject prefix) the gateway serves.
type GatewayMessage struct {
	Proto      int       `json:"proto"`
	Kind       string    `json:"kind"`
	ID         string    `json:"id"`
	State      string    `json:"state"`
	StartedAt  time.Time `json:"started_at"`
	Seq        int64     `json:"seq"`
	IntervalMS int       `json:"interval_ms"`
	Version    string    `json:"version,omitempty"`
	// NATSServer is the name of the NATS server the gateway is connected to.
	NATSServer string `json:"nats_server,omitempty"`
	// Primary are the instances the gateway sends new requests to now.
	Primary []string `json:"primary"`
	// InFlight counts the requests waiting on an instance's response.
	InFlight int64 `json:"inflight"`
	// Control is true while the gateway follows the fleet's control
	// bucket (JetStream available).
	Control bool `json:"control"`
	// ControlRevision is the latest revision of the control bucket the
	// gateway has applied or written: a peer that is behind (its watch
	// stalled with a NATS node) fetches what it missed at once.
	ControlRevision int64 `json:"control_revision,omitempty"`
}

// Interval is IntervalMS as a duration.
func (m *GatewayMessage) Interval() time.Duration {
	return time.Duration(m.IntervalMS) * time.Millisecond
}

// ObservedFailure names the process of an instance that failed a request.
type ObservedFailure struct {
	ID        string    `json:"id"`
	StartedAt time.Time `json:"started_at"`
}

// Observation is one batch of failures a gateway saw, published on
// PREFIX.obs.ID so that its fleet passes over the same instances.
type Observation struct {
	Proto   int    `json:"proto"`
	Kind    string `json:"kind"`
	Gateway string `json:"gateway"`
	// StartedAt is the gateway process's, as in its heartbeats.
	StartedAt time.Time         `json:"started_at"`
	Seq       int64             `json:"seq"`
	Failed    []ObservedFailure `json:"failed"`
}

// GatewaySubject is the subject gateway id announces itself on.
func GatewaySubject(prefix, id string) string { return prefix + ".gw." + id }

// GatewayWildcard matches every gateway heartbeat of prefix.
func GatewayWildcard(prefix string) string { return prefix + ".gw.*" }

// ObservationSubject is the subject gateway id shares its failures on.
func ObservationSubject(prefix, id string) string { return prefix + ".obs." + id }

// ObservationWildcard matches every observation of prefix.
func ObservationWildcard(prefix string) string { return prefix + ".obs.*" }

// tokenAfter returns the last token of subject when it is prefix.kind.ID.
func tokenAfter(prefix, kind, subject string) (string, bool) {
	id, ok := strings.CutPrefix(subject, prefix+"."+kind+".")
	if !ok || !ValidID(id) {
		return "", false
	}
	return id, true
}

// GatewayIDFromSubject returns the gateway id of a PREFIX.gw.ID subject.
func GatewayIDFromSubject(prefix, subject string) (string, bool) {
	return tokenAfter(prefix, "gw", subject)
}

// ObservationIDFromSubject returns the gateway id of a PREFIX.obs.ID subject.
func ObservationIDFromSubject(prefix, subject string) (string, bool) {
	return tokenAfter(prefix, "obs", subject)
}

// gatewayObject splits a payload into its top-level fields, matched
// exactly (encoding/json would match struct fields case-insensitively),
// after the checks every message shares: size, UTF-8, proto and kind.
func gatewayObject(data []byte, kind string) (map[string]json.RawMessage, error) {
	if len(data) > MaxPayload {
		return nil, invalid("payload", "%d bytes, more than %d", len(data), MaxPayload)
	}
	if !utf8.Valid(data) {
		return nil, invalid("payload", "not valid UTF-8")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, invalid("json", "%v", err)
	}
	if obj == nil {
		return nil, invalid("json", "not a JSON object")
	}
	if _, err := requiredInt("proto", obj["proto"], Proto, Proto); err != nil {
		return nil, err
	}
	var got string
	if err := field(obj, "kind", &got, true); err != nil {
		return nil, err
	}
	if got != kind {
		return nil, invalid("kind", "%q where %q is required", Truncate(got, 32), kind)
	}
	return obj, nil
}

// field decodes obj[name] into dst; a missing field is an error if required.
func field(obj map[string]json.RawMessage, name string, dst any, required bool) error {
	raw, ok := obj[name]
	if !ok || bytes.Equal(raw, []byte("null")) {
		if required {
			return invalid(name, "missing")
		}
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return invalid(name, "wrong type: %s where %s is required", typeErr.Value, typeErr.Type)
		}
		return invalid(name, "%v", err)
	}
	return nil
}

// idField reads a required id field.
func idField(obj map[string]json.RawMessage, name string) (string, error) {
	var id string
	if err := field(obj, name, &id, true); err != nil {
		return "", err
	}
	if !ValidID(id) {
		return "", invalid(name, "%q is not 1 to %d characters of A-Z a-z 0-9 _ -", Truncate(id, 72), MaxIDLen)
	}
	return id, nil
}

// timeField reads a required RFC 3339 time.
func timeField(obj map[string]json.RawMessage, name string) (time.Time, error) {
	var s string
	if err := field(obj, name, &s, true); err != nil {
		return time.Time{}, err
	}
	t, ok := parseTime(s)
	if !ok {
		return time.Time{}, invalid(name, "%q is not an RFC 3339 time", Truncate(s, 64))
	}
	return t, nil
}

// shortString reads an optional string of at most n characters.
func shortString(obj map[string]json.RawMessage, name string, n int) (string, error) {
	var s string
	if err := field(obj, name, &s, false); err != nil {
		return "", err
	}
	if utf8.RuneCountInString(s) > n {
		return "", invalid(name, "longer than %d characters", n)
	}
	return s, nil
}

// DecodeGateway parses and validates a gateway heartbeat received on
// subject under prefix. Any error is an *Error naming the field.
func DecodeGateway(prefix, subject string, data []byte) (*GatewayMessage, error) {
	id, ok := GatewayIDFromSubject(prefix, subject)
	if !ok {
		return nil, invalid("subject", "%q is not %s with a valid id", Truncate(subject, 128), GatewaySubject(prefix, "ID"))
	}
	obj, err := gatewayObject(data, KindGateway)
	if err != nil {
		return nil, err
	}
	m := &GatewayMessage{Proto: Proto, Kind: KindGateway}
	if m.ID, err = idField(obj, "id"); err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, invalid("id", "%q does not match the subject's id %q", m.ID, id)
	}
	if err := m.decodeRest(obj); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *GatewayMessage) decodeRest(obj map[string]json.RawMessage) error {
	var err error
	if err = field(obj, "state", &m.State, true); err != nil {
		return err
	}
	if m.State != GatewayStateActive && m.State != GatewayStateLeaving {
		return invalid("state", "%q is not active or leaving", Truncate(m.State, 32))
	}
	if m.StartedAt, err = timeField(obj, "started_at"); err != nil {
		return err
	}
	seq, err := requiredInt("seq", obj["seq"], 1, MaxSeq)
	if err != nil {
		return err
	}
	m.Seq = int64(seq)
	if m.IntervalMS, err = requiredInt("interval_ms", obj["interval_ms"], MinIntervalMS, MaxIntervalMS); err != nil {
		return err
	}
	if m.Version, err = shortString(obj, "version", MaxVersionLen); err != nil {
		return err
	}
	if m.NATSServer, err = shortString(obj, "nats_server", MaxNATSServerLen); err != nil {
		return err
	}
	if m.Primary, err = idList(obj, "primary", MaxGatewayPrimary); err != nil {
		return err
	}
	if raw, ok := obj["inflight"]; ok && !bytes.Equal(raw, []byte("null")) {
		n, err := requiredInt("inflight", raw, 0, MaxGatewayInFlight)
		if err != nil {
			return err
		}
		m.InFlight = int64(n)
	}
	if raw, ok := obj["control_revision"]; ok && !bytes.Equal(raw, []byte("null")) {
		n, err := requiredInt("control_revision", raw, 0, MaxSeq)
		if err != nil {
			return err
		}
		m.ControlRevision = int64(n)
	}
	return field(obj, "control", &m.Control, false)
}

// idList reads an optional list of at most n valid, distinct ids; the
// entries of a longer list are counted, not decoded (see failures).
func idList(obj map[string]json.RawMessage, name string, n int) ([]string, error) {
	var counted []uncounted
	if err := field(obj, name, &counted, false); err != nil {
		return nil, err
	}
	if len(counted) > n {
		return nil, invalid(name, "%d ids, more than %d", len(counted), n)
	}
	var ids []string
	if err := field(obj, name, &ids, false); err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if !ValidID(id) {
			return nil, invalid(name, "%q is not a valid id", Truncate(id, 72))
		}
		if seen[id] {
			return nil, invalid(name, "%q is listed twice", id)
		}
		seen[id] = true
	}
	return ids, nil
}

// DecodeObservation parses and validates an observation received on
// subject under prefix. Any error is an *Error naming the field.
func DecodeObservation(prefix, subject string, data []byte) (*Observation, error) {
	id, ok := ObservationIDFromSubject(prefix, subject)
	if !ok {
		return nil, invalid("subject", "%q is not %s with a valid id", Truncate(subject, 128), ObservationSubject(prefix, "ID"))
	}
	obj, err := gatewayObject(data, KindObservation)
	if err != nil {
		return nil, err
	}
	o := &Observation{Proto: Proto, Kind: KindObservation}
	if o.Gateway, err = idField(obj, "gateway"); err != nil {
		return nil, err
	}
	if o.Gateway != id {
		return nil, invalid("gateway", "%q does not match the subject's id %q", o.Gateway, id)
	}
	if o.StartedAt, err = timeField(obj, "started_at"); err != nil {
		return nil, err
	}
	seq, err := requiredInt("seq", obj["seq"], 1, MaxSeq)
	if err != nil {
		return nil, err
	}
	o.Seq = int64(seq)
	if o.Failed, err = failures(obj); err != nil {
		return nil, err
	}
	return o, nil
}

// uncounted is an array element that is only counted: it decodes into
// nothing and takes no memory, so that counting the entries of a hostile
// array allocates nothing per entry.
type uncounted struct{}

func (*uncounted) UnmarshalJSON([]byte) error { return nil }

// failures reads the required, non-empty, bounded list of failures. The
// entries are counted first, which allocates nothing per entry, and only
// an array within the limit is decoded: a payload of thousands of tiny
// entries is refused before any of them is.
func failures(obj map[string]json.RawMessage) ([]ObservedFailure, error) {
	var counted []uncounted
	if err := field(obj, "failed", &counted, true); err != nil {
		return nil, err
	}
	if len(counted) == 0 || len(counted) > MaxObservedFailures {
		return nil, invalid("failed", "%d entries; 1 to %d are allowed", len(counted), MaxObservedFailures)
	}
	var raw []json.RawMessage
	if err := field(obj, "failed", &raw, true); err != nil {
		return nil, err
	}
	out := make([]ObservedFailure, 0, len(raw))
	for _, item := range raw {
		var entry map[string]json.RawMessage
		if err := json.Unmarshal(item, &entry); err != nil || entry == nil {
			return nil, invalid("failed", "an entry is not an object")
		}
		id, err := idField(entry, "id")
		if err != nil {
			return nil, invalid("failed", "%s", err.(*Error).Reason)
		}
		started, err := timeField(entry, "started_at")
		if err != nil {
			return nil, invalid("failed", "%s", err.(*Error).Reason)
		}
		out = append(out, ObservedFailure{ID: id, StartedAt: started})
	}
	return out, nil
}

// EncodeGateway returns the JSON payload of a gateway message or an
// observation. It does not validate it.
func EncodeGateway(v any) ([]byte, error) { return encodeJSON(v) }
