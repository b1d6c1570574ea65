package membership

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// BenchmarkObserveSteadyState is the gateway's cost per heartbeat with
// 10,000 known instances beating once a second (routing unchanged).
func BenchmarkObserveSteadyState(b *testing.B) {
	r, err := New(Config{RebuildEvery: 50 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	const n = 10000
	subjects := make([]string, n)
	payloads := make([][][]byte, n)
	for i := range n {
		id := fmt.Sprintf("fake-%05d", i)
		subjects[i] = heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, id)
		for seq := int64(1); seq <= 64; seq++ {
			m := heartbeat.Message{Proto: 1, ID: id, URL: fmt.Sprintf("http://10.0.%d.%d:8080", i/250, i%250+1),
				State: heartbeat.StateReady, StartedAt: p0, Seq: seq, IntervalMS: 1000, Version: "2026.4.1", Priority: 10,
				LeaderRoles: []string{"x"}, Meta: map[string]string{"license": "ok"}}
			data, _ := heartbeat.Encode(&m)
			payloads[i] = append(payloads[i], data)
		}
	}
	now := time.Now()
	for i := range n {
		_ = r.Observe(subjects[i], payloads[i][0], now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for k := 0; k < b.N; k++ {
		i := k % n
		seq := 1 + (k/n)%63
		now = now.Add(100 * time.Microsecond)
		_ = r.Observe(subjects[i], payloads[i][seq], now)
	}
}

// BenchmarkJoinOfLargeFleet is 10,000 instances answering a discover at
// once, with rebuilds coalesced as the gateway runs them.
func BenchmarkJoinOfLargeFleet(b *testing.B) {
	msgs := make([]*heartbeat.Message, 10000)
	for i := range msgs {
		msgs[i] = beat(fmt.Sprintf("fake-%05d", i), 1, withPriority(i%3))
	}
	b.ResetTimer()
	for range b.N {
		r, _ := New(Config{RebuildEvery: 50 * time.Millisecond})
		now := time.Now()
		for _, m := range msgs {
			r.Apply(m, now)
		}
	}
}
