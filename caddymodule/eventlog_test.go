package caddymodule

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-cx/caddy-cx/membership"
)

// TestEventLogRateLimited: a publisher that makes the gateway log on its
// every message (an id conflict, a role conflict, flapping, an unknown
// kind) gets one line per kind per rejectLogEvery, and the next line says
// how many were not logged; lifecycle events get a burst, then the same.
func TestEventLogRateLimited(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := newEventLog(zap.New(core))
	now := time.Now()
	l.now = func() time.Time { return now }
	kinds := []membership.EventKind{membership.EventConflict, membership.EventRoleConflict, membership.EventFlapping,
		membership.EventAliveUnheard, membership.EventKind("priority_clamped")}
	for i := 0; i < 1000; i++ {
		for _, k := range kinds {
			l.event(membership.Event{Kind: k, ID: "victim", URL: "http://127.0.0.1:1", Detail: "hostile"})
		}
		l.event(membership.Event{Kind: membership.EventRestart, ID: "victim"})
		l.event(membership.Event{Kind: membership.EventRejected, Reason: "rate", ID: "victim"})
	}
	lines := logs.TakeAll()
	want := len(kinds) + 1 + lifecycleBurst
	if len(lines) != want {
		t.Fatalf("%d lines logged for 7000 events, want %d", len(lines), want)
	}
	now = now.Add(rejectLogEvery)
	l.event(membership.Event{Kind: membership.EventConflict, ID: "victim"})
	lines = logs.TakeAll()
	if len(lines) != 1 || lines[0].ContextMap()["similar_not_logged"] != int64(999) {
		t.Fatalf("after %v: %v", rejectLogEvery, lines)
	}
	// lifecycle events: a burst, then a refill per second
	for i := 0; i < 300; i++ {
		l.event(membership.Event{Kind: membership.EventJoin, ID: "victim"})
	}
	if n := len(logs.TakeAll()); n != lifecycleBurst {
		t.Fatalf("%d join lines for 300 joins, want %d", n, lifecycleBurst)
	}
	now = now.Add(time.Second)
	for i := 0; i < 100; i++ {
		l.event(membership.Event{Kind: membership.EventJoin, ID: "victim"})
	}
	lines = logs.TakeAll()
	if len(lines) != lifecycleRefill || lines[0].ContextMap()["similar_not_logged"] != int64(100) {
		t.Fatalf("%d join lines a second later, want %d; first %v", len(lines), lifecycleRefill, lines[0].ContextMap())
	}
}

func TestEventLogClipsLongFields(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := newEventLog(zap.New(core))
	ids := strings.Repeat("app-instance-0001,", 10000)
	l.event(membership.Event{Kind: membership.EventRoleConflict, ID: ids, Detail: "leader role x is claimed by " + ids})
	lines := logs.TakeAll()
	if len(lines) != 1 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, f := range []string{"instance", "detail"} {
		if v := lines[0].ContextMap()[f].(string); len(v) > maxLogField+40 || !strings.Contains(v, "more bytes") {
			t.Errorf("%s: %d bytes", f, len(v))
		}
	}
}
