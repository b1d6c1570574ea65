package heartbeat

import (
	"bytes"
	"reflect"
	"strconv"
	"testing"
)

func TestNextSeq(t *testing.T) {
	prev := []byte(`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":99,"interval_ms":100,"meta":{"seq":"5"}}`)
	start, end, ok := SeqSpan(prev)
	if !ok || string(prev[start:end]) != "99" {
		t.Fatalf("span %d:%d %v", start, end, ok)
	}
	cases := []struct {
		data string
		seq  int64
		ok   bool
	}{
		{`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":100,"interval_ms":100,"meta":{"seq":"5"}}`, 100, true},
		{`{"proto":1,"id":"app1","url":"http://h:1","state":"draining","started_at":"2026-11-25T21:00:00Z","seq":100,"interval_ms":100,"meta":{"seq":"5"}}`, 0, false},
		{`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":0100,"interval_ms":100,"meta":{"seq":"5"}}`, 0, false},
		{`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":100.5,"interval_ms":100,"meta":{"seq":"5"}}`, 0, false},
		{`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":9007199254740992,"interval_ms":100,"meta":{"seq":"5"}}`, 0, false},
		{`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":,"interval_ms":100,"meta":{"seq":"5"}}`, 0, false},
	}
	for _, c := range cases {
		seq, ok := NextSeq(prev, start, end, []byte(c.data))
		if seq != c.seq || ok != c.ok {
			t.Errorf("NextSeq(%s) = %d, %v; want %d, %v", c.data, seq, ok, c.seq, c.ok)
		}
	}
}

// FuzzNextSeq: whenever NextSeq recognises a payload, decoding it in full
// gives the previous message with that seq.
func FuzzNextSeq(f *testing.F) {
	f.Add([]byte(protocolExample), []byte("43"))
	f.Add([]byte(protocolExample), []byte("4x"))
	f.Add([]byte(`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":1,"seq":2,"interval_ms":100}`), []byte("3"))
	f.Add([]byte(`{"proto":1,"id":"app1","url":"http://h:1","state":"ready","started_at":"2026-11-25T21:00:00Z","seq":1,"\u0073eq":2,"interval_ms":100}`), []byte("3"))
	f.Fuzz(func(t *testing.T, prev, digits []byte) {
		pm, err := Parse(prev)
		if err != nil {
			return
		}
		start, end, ok := SeqSpan(prev)
		if !ok {
			return // repeated or escaped keys: always decoded in full
		}
		if got, _ := strconv.ParseInt(string(prev[start:end]), 10, 64); got != pm.Seq {
			t.Fatalf("span %q is not the seq %d", prev[start:end], pm.Seq)
		}
		data := append(append(append([]byte{}, prev[:start]...), digits...), prev[end:]...)
		seq, ok := NextSeq(prev, start, end, data)
		if !ok {
			return
		}
		m, err := Parse(data)
		if err != nil {
			t.Fatalf("NextSeq accepted %q (seq %d) but Parse refuses it: %v", data, seq, err)
		}
		want := *pm
		want.Seq = seq
		if !reflect.DeepEqual(*m, want) || !bytes.Equal(data[:start], prev[:start]) {
			t.Fatalf("NextSeq: %+v, full decode %+v", want, *m)
		}
	})
}
