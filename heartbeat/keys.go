package heartbeat

import "bytes"

// wireFields are the keys of protocol version 1.
var wireFields = []string{"proto", "id", "url", "state", "started_at", "seq", "interval_ms", "version",
	"priority", "leader_roles", "meta"}

// forEachTopKey calls fn for every key of the top-level object in data,
// with whether it is plain (ASCII, no escapes: its bytes are its value)
// and the index just after its colon. It stops, returning false, when fn
// does; it does not validate the JSON (the decoder does).
func forEachTopKey(data []byte, fn func(key []byte, plain bool, valueAt int) bool) bool {
	depth, inString, escaped := 0, false, false
	keyStart, expectKey, plain := -1, false, true
	var key []byte
	for i, c := range data {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped, plain = true, plain && keyStart < 0
			case c == '"':
				inString = false
				if keyStart >= 0 {
					key, keyStart = data[keyStart:i], -1
				}
			case c >= 0x80 && keyStart >= 0:
				plain = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
			if depth == 1 && expectKey {
				keyStart, expectKey, plain = i+1, false, true
			}
		case ':':
			if depth == 1 && key != nil {
				if !fn(key, plain, i+1) {
					return false
				}
				key = nil
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

// exactKeys reports whether data is an object whose top-level keys can be
// decoded into wire without encoding/json's case-insensitive matching
// changing the result: no key differs from a protocol key only by case,
// and no key is escaped or non-ASCII (where folding rules are subtle).
// When unsure it says false; the exact (slower) decoder then decides.
func exactKeys(data []byte) bool {
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return false
	}
	return forEachTopKey(data, func(key []byte, plain bool, _ int) bool {
		return plain && keyIsExact(key)
	})
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
