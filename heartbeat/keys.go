package heartbeat

import "bytes"

// wireFields are the keys of protocol version 1.
var wireFields = []string{"proto", "id", "url", "state", "started_at", "seq", "interval_ms", "version",
	"priority", "leader_roles", "meta"}

// exactKeys reports whether data is an object whose top-level keys can be
// decoded into wire without encoding/json's case-insensitive matching
// changing the result: no key differs from a protocol key only by case,
// and no key is escaped or non-ASCII (where folding rules are subtle).
// When unsure it says false; the exact (slower) decoder then decides.
func exactKeys(data []byte) bool {
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return false
	}
	depth, inString, escaped, keyStart, expectKey := 0, false, false, -1, false
	for i, c := range data {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				if keyStart >= 0 {
					return false
				}
				escaped = true
			case c == '"':
				inString = false
				if keyStart >= 0 && !keyIsExact(data[keyStart:i]) {
					return false
				}
				keyStart = -1
			case c >= 0x80 && keyStart >= 0:
				return false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
			if depth == 1 && expectKey {
				keyStart, expectKey = i+1, false
			}
		case '{':
			depth++
			expectKey = depth == 1
		case '[':
			depth++
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		}
	}
	return true
}

// keyIsExact reports whether key (ASCII) is not a protocol key spelt with
// other letter cases.
func keyIsExact(key []byte) bool {
	for _, f := range wireFields {
		if len(key) == len(f) && string(key) != f && equalFoldASCII(key, f) {
			return false
		}
	}
	return true
}

func equalFoldASCII(a []byte, b string) bool {
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
