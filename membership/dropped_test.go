package membership

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestDroppedMessagesAreCounted: messages NATS drops because the gateway
// fell behind (slow consumer) are reported as rejections with their count,
// so that what was sent always adds up to what was counted.
func TestDroppedMessagesAreCounted(t *testing.T) {
	ns := startNATS(t)
	var (
		release  = make(chan struct{})
		once     sync.Once
		rejected atomic.Int64
		dropped  atomic.Int64
	)
	reg, err := New(Config{OnEvent: func(ev Event) {
		// The first rejection holds up the subscription's handler while
		// the rest pile up beyond its pending limit.
		once.Do(func() { <-release })
		if ev.Kind != EventRejected {
			return
		}
		rejected.Add(int64(ev.Messages()))
		if ev.Reason == "dropped" {
			dropped.Add(int64(ev.Count))
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, connect(t, ns.url()), reg)
	pub := connect(t, ns.url())
	const sent = 1<<16 + 5000
	for range sent {
		if err := pub.Publish("cx.ha.hb.app1", []byte("not json")); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	// Everything the server sent is now either pending or dropped: the
	// subscriber's pending queue is full once more than its limit is in.
	eventually(t, "the gateway's connection to drop what exceeds the pending limit", func() bool {
		n, err := w.sub.Dropped()
		return err == nil && n >= sent-(1<<16)-1
	})
	close(release)
	eventually(t, "every message counted as a rejection", func() bool { return rejected.Load() == sent })
	if dropped.Load() == 0 {
		t.Fatalf("no message was reported dropped")
	}
	t.Logf("%d sent: %d rejected, %d of them dropped unread", sent, rejected.Load(), dropped.Load())
}
