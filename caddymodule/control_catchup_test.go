package caddymodule

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/membership"
)

// stalledFollower is a service whose control follower never watches: what
// a gateway is while its watch is stalled by a dying NATS node. Only a
// catch-up can bring it news.
func stalledFollower(t *testing.T, url, prefix string) *Service {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s, err := newService(&natsLink{}, &claim{owner: &App{GatewayID: "gw-b"},
		settings: serviceSettings{membership: membership.Config{Prefix: prefix}}, logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	c := &controlState{s: s, logs: oncePer(time.Minute), done: make(chan struct{}), revisions: map[string]uint64{}, released: true}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.bucket = acquireBucket(nc)
	close(c.done)
	s.control.Store(c)
	s.reg.SetControls(nil)
	t.Cleanup(func() { s.stopControl(); s.reg.Close() })
	return s
}

// TestControlCatchUp: a gateway behind on the bucket reads, by revision,
// the entries of its own prefix that a peer announced; a peer announcing
// a revision never written moves nothing.
func TestControlCatchUp(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: ControlBucket, History: 16})
	if err != nil {
		t.Fatal(err)
	}
	b := stalledFollower(t, ns.ClientURL(), "cx.ha")

	hold := membership.Control{State: membership.ControlMaintenance, By: "test", At: time.Now().UTC()}
	put := func(key string, value []byte) uint64 {
		rev, err := kv.Put(ctx, key, value)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	put("cx.ha.app1", hold.Encode())
	put("other.app9", hold.Encode()) // another service's
	put("cx.ha.app2", hold.Encode())
	if err := kv.Delete(ctx, "cx.ha.app2"); err != nil {
		t.Fatal(err)
	}
	last := put("cx.ha.app3", []byte("not a control entry"))

	// a liar first: a revision far beyond any written
	b.controlCatchUp(1 << 40)
	eventually(t, 5*time.Second, func() bool { return !b.control.Load().catching.Load() && b.control.Load().known.Load() == last }, "the catch-up to end at the last real entry")
	controls := b.reg.Controls()
	if len(controls) != 1 || controls["app1"].State != membership.ControlMaintenance {
		t.Fatalf("controls after the catch-up: %v, want app1 in maintenance only (app2 deleted, app3 invalid, app9 another service's)", controls)
	}
	if n := b.control.Load().rejected.Load(); n != 1 {
		t.Errorf("rejected entries %d, want 1 (app3)", n)
	}

	// caught up: a further announcement of the same revision reads nothing
	b.controlCatchUp(int64(last))
	if b.control.Load().catching.Load() {
		t.Error("a catch-up started for a revision already known")
	}

	// a later write is read when announced
	start := time.Now()
	rev := put("cx.ha.app1", membership.Control{State: membership.ControlReady, By: "test", At: time.Now().UTC()}.Encode())
	b.controlCatchUp(int64(rev))
	eventually(t, 5*time.Second, func() bool { _, held := b.reg.Controls()["app1"]; return !held }, "app1 released by the catch-up")
	t.Logf("catch-up of one entry: %v", time.Since(start))
}

// TestControlSyncKeepsLaterHolds: the watcher's first read replaces the
// holds, except those applied here after that read (a drain the admin
// API confirmed while the watcher was still reading).
func TestControlSyncKeepsLaterHolds(t *testing.T) {
	ns := jetStreamNATS(t, 0, "")
	s := stalledFollower(t, ns.ClientURL(), "cx.ha")
	c := s.control.Load()
	hold := membership.Control{State: membership.ControlMaintenance, By: "test", At: time.Now().UTC()}
	c.apply("late", hold, 12) // written after the read below
	c.apply("old", hold, 3)   // before it, and gone from the bucket since
	read := map[string]membership.Control{"app1": hold}
	c.sync(read, map[string]uint64{"app1": 7, "gone": 9})
	controls := s.reg.Controls()
	if _, ok := controls["late"]; !ok || len(controls) != 2 || controls["app1"].State != membership.ControlMaintenance {
		t.Fatalf("holds after the first read: %v; want app1 (read) and late (applied after the read), not old", controls)
	}
	if got := c.known.Load(); got != 9 {
		t.Errorf("revision read %d, want 9", got)
	}
}
