package heartbeat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Error is why a message is not valid protocol version 1. Field names the
// offending field (or "payload", "json", "subject"); it is a small, fixed set
// of values, safe to use as a metric label.
type Error struct {
	Field  string
	Reason string
}

func (e *Error) Error() string {
	return "invalid heartbeat: " + e.Field + ": " + e.Reason
}

func invalid(field, format string, args ...any) *Error {
	return &Error{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// wire mirrors Message with every field optional and integers kept raw, so
// that missing fields and non-integer numbers can be told apart.
type wire struct {
	Proto       json.RawMessage   `json:"proto"`
	ID          *string           `json:"id"`
	URL         *string           `json:"url"`
	State       *string           `json:"state"`
	StartedAt   *string           `json:"started_at"`
	Seq         json.RawMessage   `json:"seq"`
	IntervalMS  json.RawMessage   `json:"interval_ms"`
	Version     *string           `json:"version"`
	Priority    json.RawMessage   `json:"priority"`
	LeaderRoles []string          `json:"leader_roles"`
	Meta        map[string]string `json:"meta"`
}

// decode fills w from a JSON object. Keys match exactly: encoding/json would
// match struct fields case-insensitively, so that "ID" or "Url" (unknown
// fields, to be ignored) would override "id" or "url".
func (w *wire) decode(data []byte) error {
	// Fast path: one pass into the struct, when no key could be matched
	// case-insensitively. Any error is reported by the exact path below.
	if exactKeys(data) {
		if err := json.Unmarshal(data, w); err == nil {
			return nil
		}
		*w = wire{}
	}
	return w.decodeExact(data)
}

// decodeExact decodes through a map so that keys match exactly.
func (w *wire) decodeExact(data []byte) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return invalid("json", "%v", err)
	}
	if obj == nil {
		return invalid("json", "not a JSON object")
	}
	w.Proto, w.Seq, w.IntervalMS, w.Priority = obj["proto"], obj["seq"], obj["interval_ms"], obj["priority"]
	fields := []struct {
		name string
		dst  any
	}{
		{"id", &w.ID}, {"url", &w.URL}, {"state", &w.State}, {"started_at", &w.StartedAt},
		{"version", &w.Version}, {"leader_roles", &w.LeaderRoles}, {"meta", &w.Meta},
	}
	for _, f := range fields {
		raw, ok := obj[f.name]
		if !ok {
			continue
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			var typeErr *json.UnmarshalTypeError
			if errors.As(err, &typeErr) {
				return invalid(f.name, "wrong type: %s where %s is required", typeErr.Value, typeErr.Type)
			}
			return invalid(f.name, "%v", err)
		}
	}
	return nil
}

// Decode parses and validates one heartbeat received on subject under
// prefix. Any error is an *Error naming the field.
func Decode(prefix, subject string, data []byte) (*Message, error) {
	id, ok := IDFromSubject(prefix, subject)
	if !ok || !ValidID(id) {
		return nil, invalid("subject", "%q is not %s with a valid id", subject, HeartbeatSubject(prefix, "ID"))
	}
	m, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, invalid("id", "%q does not match the subject's id %q", m.ID, id)
	}
	return m, nil
}

// Parse parses and validates one heartbeat payload, without a subject.
func Parse(data []byte) (*Message, error) {
	if len(data) > MaxPayload {
		return nil, invalid("payload", "%d bytes, more than %d", len(data), MaxPayload)
	}
	if !utf8.Valid(data) {
		return nil, invalid("payload", "not valid UTF-8")
	}
	var w wire
	if err := w.decode(data); err != nil {
		return nil, err
	}
	return w.message()
}

func (w *wire) message() (*Message, error) {
	var m Message
	var err error
	if m.Proto, err = requiredInt("proto", w.Proto, Proto, Proto); err != nil {
		return nil, err
	}
	if err := w.strings(&m); err != nil {
		return nil, err
	}
	seq, err := requiredInt("seq", w.Seq, 1, MaxSeq)
	if err != nil {
		return nil, err
	}
	m.Seq = int64(seq)
	if m.IntervalMS, err = requiredInt("interval_ms", w.IntervalMS, MinIntervalMS, MaxIntervalMS); err != nil {
		return nil, err
	}
	if w.Priority != nil && !bytes.Equal(w.Priority, []byte("null")) {
		if m.Priority, err = requiredInt("priority", w.Priority, MinPriority, MaxPriority); err != nil {
			return nil, err
		}
	}
	if err := validRoles(w.LeaderRoles); err != nil {
		return nil, err
	}
	m.LeaderRoles = w.LeaderRoles
	if err := validMeta(w.Meta); err != nil {
		return nil, err
	}
	m.Meta = w.Meta
	return &m, nil
}

func (w *wire) strings(m *Message) error {
	if w.ID == nil {
		return invalid("id", "missing")
	}
	if !ValidID(*w.ID) {
		return invalid("id", "%q is not 1 to %d characters of A-Z a-z 0-9 _ -", *w.ID, MaxIDLen)
	}
	m.ID = *w.ID
	if w.URL == nil {
		return invalid("url", "missing")
	}
	if err := ValidURL(*w.URL); err != nil {
		return err
	}
	m.URL = *w.URL
	if w.State == nil {
		return invalid("state", "missing")
	}
	if m.State = State(*w.State); !m.State.Valid() {
		return invalid("state", "%q is not ready, draining or leaving", *w.State)
	}
	if w.StartedAt == nil {
		return invalid("started_at", "missing")
	}
	t, ok := parseTime(*w.StartedAt)
	if !ok {
		return invalid("started_at", "%q is not an RFC 3339 time", Truncate(*w.StartedAt, 64))
	}
	m.StartedAt = t
	if w.Version != nil {
		if utf8.RuneCountInString(*w.Version) > MaxVersionLen {
			return invalid("version", "longer than %d characters", MaxVersionLen)
		}
		m.Version = *w.Version
	}
	return nil
}

// parseTime parses an RFC 3339 time. time.Parse also takes a comma before
// the fraction and zone offsets of 24 hours or more, which are not RFC 3339
// and which time.Time.MarshalJSON refuses.
func parseTime(s string) (time.Time, bool) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || strings.Contains(s, ",") {
		return time.Time{}, false
	}
	if _, off := t.Zone(); off <= -24*60*60 || off >= 24*60*60 {
		return time.Time{}, false
	}
	return t, true
}

// requiredInt parses raw as a JSON integer (no fraction, no exponent, not a
// string) within [lo, hi].
func requiredInt(field string, raw json.RawMessage, lo, hi int) (int, error) {
	if raw == nil || bytes.Equal(raw, []byte("null")) {
		return 0, invalid(field, "missing")
	}
	s := string(raw)
	if !isJSONInteger(s) {
		return 0, invalid(field, "%s is not an integer", Truncate(s, 32))
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < int64(lo) || n > int64(hi) {
		return 0, invalid(field, "%s is outside %d to %d", Truncate(s, 32), lo, hi)
	}
	return int(n), nil
}

func isJSONInteger(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Truncate shortens s to n bytes, marking the cut with …, for repeating
// untrusted text in errors and logs.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func validRoles(roles []string) error {
	if len(roles) > MaxRoles {
		return invalid("leader_roles", "%d roles, more than %d", len(roles), MaxRoles)
	}
	for _, r := range roles {
		if n := utf8.RuneCountInString(r); n == 0 || n > MaxRoleLen {
			return invalid("leader_roles", "a role must be 1 to %d characters", MaxRoleLen)
		}
	}
	return nil
}

func validMeta(meta map[string]string) error {
	if len(meta) > MaxMetaEntries {
		return invalid("meta", "%d entries, more than %d", len(meta), MaxMetaEntries)
	}
	for k, v := range meta {
		if utf8.RuneCountInString(k) > MaxMetaKeyLen {
			return invalid("meta", "key longer than %d characters", MaxMetaKeyLen)
		}
		if utf8.RuneCountInString(v) > MaxMetaValLen {
			return invalid("meta", "value of %q longer than %d characters", Truncate(k, 64), MaxMetaValLen)
		}
	}
	return nil
}

// ValidURL checks an instance url: http or https, an explicit port, no path
// (a lone "/" is allowed), no user info, query or fragment; the host an IP
// literal (IPv6 in brackets) or a DNS name.
func ValidURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return invalid("url", "%q does not parse: %v", Truncate(raw, 128), err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return invalid("url", "scheme %q is not http or https", u.Scheme)
	case u.Opaque != "" || u.Host == "":
		return invalid("url", "%q has no host", Truncate(raw, 128))
	case u.User != nil:
		return invalid("url", "user info is not allowed")
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.ForceQuery, u.Fragment != "":
		return invalid("url", "%q has a path, query or fragment; only scheme://host:port is allowed", Truncate(raw, 128))
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || port == "" {
		return invalid("url", "%q needs an explicit port", Truncate(raw, 128))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return invalid("url", "port %q is not 1 to 65535", port)
	}
	if strings.HasPrefix(u.Host, "[") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
			return invalid("url", "%q is not an IPv6 literal", host)
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !validDNSName(host) {
		return invalid("url", "host %q is neither an IP literal nor a DNS name", Truncate(host, 128))
	}
	return nil
}

func validDNSName(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// HostPort is the host:port of a valid instance url, in the form Caddy's
// dial addresses take.
func HostPort(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return u.Host
}

// IPHost returns the IP literal of a valid instance url, if it has one.
func IPHost(rawURL string) (netip.Addr, bool) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(u.Hostname())
	return a, err == nil
}

// Encode returns the JSON payload of m. It does not validate m. HTML
// characters are not escaped, which keeps the payload as small as its
// content allows.
func Encode(m *Message) ([]byte, error) { return encodeJSON(m) }

func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
