package membership

import (
	"slices"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// lastPayload is the last fully decoded heartbeat of a member: the steady
// state of an instance is the same payload with seq counting up, which is
// recognised by comparing bytes instead of decoding JSON again (the bulk
// of a large fleet's cost). Only decoding is skipped: Apply's rules run on
// every message.
type lastPayload struct {
	payload          []byte
	seqStart, seqEnd int
	decoded          heartbeat.Message
}

// recognise returns the message data carries if it is the member's last
// payload with another seq; nil means data must be decoded.
func (r *Registry) recognise(subject string, data []byte) *heartbeat.Message {
	id, ok := heartbeat.IDFromSubject(r.prefix, subject)
	if !ok {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.members[id]
	if e == nil || e.payload == nil {
		return nil
	}
	seq, ok := heartbeat.NextSeq(e.payload, e.seqStart, e.seqEnd, data)
	if !ok {
		return nil
	}
	m := e.decoded
	m.Seq = seq
	return &m
}

// remember keeps data as the member's last payload if m was accepted as
// its current process's heartbeat.
func (r *Registry) remember(m *heartbeat.Message, data []byte) {
	start, end, ok := heartbeat.SeqSpan(data)
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.members[m.ID]
	// A message of another publisher with the known process's started_at
	// and seq (an id conflict) is never kept as the member's payload.
	if e == nil || !e.StartedAt.Equal(m.StartedAt) || e.Seq != m.Seq || e.URL != m.URL {
		return
	}
	if !ok {
		e.lastPayload = lastPayload{}
		return
	}
	e.lastPayload = lastPayload{payload: slices.Clone(data), seqStart: start, seqEnd: end, decoded: *m}
}
