package caddymodule

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// TestHostilePublisherCannotTakeOverEvictOrStarve replays the attacks of a
// publisher on an open NATS against a running gateway: the victim keeps
// serving every request and the attacker's backend gets none.
func TestHostilePublisherCannotTakeOverEvictOrStarve(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tallow_networks 127.0.0.0/8\n\t\tallow_ids app*\n\t\tpriority_range 10 100\n\t\tpriority app1 0\n\t}\n}")
	nc := connect(t, natsURL)
	victimBackend := startBackend(t, "app1")
	evil := startBackend(t, "evil")
	victim := newInstance(t, nc, "app1", victimBackend.url, 0)
	victim.beat(heartbeat.StateReady)
	servedBy(t, base, "app1", time.Second)
	known := victim.msg // the victim's process, as the status page shows it
	stop := victim.keepBeating()
	defer stop()

	attacker := newInstance(t, nc, "app1", evil.url, 0)
	forge := func(change func(m *heartbeat.Message)) {
		m := known
		change(&m)
		data, err := heartbeat.Encode(&m)
		if err != nil {
			t.Fatal(err)
		}
		attacker.raw(heartbeat.HeartbeatSubject(heartbeat.DefaultPrefix, m.ID), data)
	}
	// Take-over within the process: same started_at, far seq, another url.
	forge(func(m *heartbeat.Message) { m.URL, m.Seq = evil.url, known.Seq+1<<50 })
	// Eviction: a leaving 100 years ahead, and one of a newer process.
	forge(func(m *heartbeat.Message) {
		m.StartedAt, m.Seq, m.State = known.StartedAt.AddDate(100, 0, 0), 1, heartbeat.StateLeaving
	})
	forge(func(m *heartbeat.Message) {
		m.StartedAt, m.Seq, m.State = known.StartedAt.Add(time.Millisecond), 1, heartbeat.StateLeaving
	})
	// Starving: 50 messages of an older process.
	for i := range 50 {
		forge(func(m *heartbeat.Message) { m.StartedAt, m.Seq = known.StartedAt.Add(-time.Hour), int64(i+1) })
	}
	// Primary by priority: an id outside allow_ids, and an allowed one
	// whose priority is clamped behind the victim's (operator-set) one.
	forge(func(m *heartbeat.Message) { m.ID, m.URL, m.Priority, m.Seq = "intruder", evil.url, -1000, 1 })
	forge(func(m *heartbeat.Message) {
		m.ID, m.URL, m.Priority, m.Seq, m.StartedAt = "app666", evil.url, -1000, 1, time.Now().UTC()
	})
	listed := func(id string) bool {
		for _, mb := range serviceOf(t, heartbeat.DefaultPrefix).reg.Members() {
			if mb.ID == id {
				return true
			}
		}
		return false
	}
	eventually(t, time.Second, func() bool { return listed("app666") }, "the clamped instance")

	// Longer than stale_after (3 x 200ms): the victim must still be heard.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if id, code := get(t, "GET", base); code != http.StatusOK || id != "app1" {
			t.Fatalf("status %d from %q; the victim must keep serving", code, id)
		}
	}
	if evil.count("GET") != 0 {
		t.Fatalf("the attacker's backend got %d requests", evil.count("GET"))
	}
	m := memberOf(t, "app1")
	if m.URL != victimBackend.url || !m.StartedAt.Equal(known.StartedAt) || m.State != "active" {
		t.Fatalf("victim changed: %+v", m)
	}
	if p := memberOf(t, "app666").Priority; p != 10 {
		t.Fatalf("priority -1000 announced, routed with %d; want clamped to 10", p)
	}
	if listed("intruder") {
		t.Fatal("an id outside allow_ids was stored")
	}
}
