package heartbeat

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the subject prefix used when none is configured.
const DefaultPrefix = "cx.ha"

// HeartbeatSubject is the subject instance id publishes its heartbeats on.
func HeartbeatSubject(prefix, id string) string { return prefix + ".hb." + id }

// HeartbeatWildcard is the subject a gateway subscribes to for every instance.
func HeartbeatWildcard(prefix string) string { return prefix + ".hb.*" }

// DiscoverSubject is the subject gateways publish on to ask every instance
// for an immediate heartbeat.
func DiscoverSubject(prefix string) string { return prefix + ".discover" }

// IDFromSubject returns the ID token of a heartbeat subject under prefix.
func IDFromSubject(prefix, subject string) (string, bool) {
	id, ok := strings.CutPrefix(subject, prefix+".hb.")
	if !ok || id == "" || strings.Contains(id, ".") {
		return "", false
	}
	return id, true
}

// ValidID reports whether id is 1 to 64 characters of A-Z a-z 0-9 _ -.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidPrefix reports whether prefix can be used as a subject prefix: one or
// more dot-separated tokens without wildcards or white space.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return fmt.Errorf("subject prefix is empty")
	}
	for _, tok := range strings.Split(prefix, ".") {
		if tok == "" {
			return fmt.Errorf("subject prefix %q has an empty token (leading, trailing or double dot)", prefix)
		}
		if strings.ContainsAny(tok, "*> \t\r\n") {
			return fmt.Errorf("subject prefix %q may not contain wildcards or white space", prefix)
		}
	}
	return nil
}
