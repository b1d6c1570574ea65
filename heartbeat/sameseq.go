package heartbeat

import "bytes"

// SeqSpan returns where the top-level "seq" value lies in a payload that
// decoded successfully, so that the next heartbeat of the same process can
// be recognised without decoding it (see NextSeq). It says false when it
// cannot be sure which "seq" the decoder took: a repeated or escaped key.
func SeqSpan(data []byte) (start, end int, ok bool) {
	found := false
	complete := forEachTopKey(data, func(key []byte, plain bool, valueAt int) bool {
		switch {
		case !plain:
			return false
		case string(key) != "seq":
			return true
		case found:
			return false
		}
		start, end, found = digitsAfter(data, valueAt)
		return found
	})
	return start, end, complete && found
}

func digitsAfter(data []byte, i int) (start, end int, ok bool) {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n') {
		i++
	}
	start = i
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	return start, i, i > start
}

// NextSeq recognises data as prev with only the digits of its top-level
// "seq" value changed (prev's seq at prev[start:end]): the steady state of
// an instance, whose heartbeats differ by seq alone. It returns the new
// seq, valid for protocol version 1; false means data must be decoded.
// Identical bytes around the digits decode to identical values, so the
// message is prev's with this seq.
func NextSeq(prev []byte, start, end int, data []byte) (seq int64, ok bool) {
	if len(data) > MaxPayload || start > len(data) || !bytes.Equal(data[:start], prev[:start]) {
		return 0, false
	}
	i := start
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	digits := data[start:i]
	if len(digits) == 0 || len(digits) > 16 || (digits[0] == '0' && len(digits) > 1) || !bytes.Equal(data[i:], prev[end:]) {
		return 0, false
	}
	for _, d := range digits {
		seq = seq*10 + int64(d-'0')
	}
	if seq < 1 || seq > MaxSeq {
		return 0, false
	}
	return seq, true
}
