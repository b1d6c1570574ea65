package membership

import (
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// SweepInterval is how often the watcher looks for silent members; it bounds
// how late past stale_after a member is taken out of routing.
const SweepInterval = 50 * time.Millisecond

// Watcher feeds a Registry from NATS: it subscribes to every heartbeat of
// the registry's prefix, asks for heartbeats (discover) on start and on
// every reconnect, and freezes staleness while the connection is down.
type Watcher struct {
	nc  *nats.Conn
	reg *Registry
	// OnError is told of failures to subscribe or publish discover.
	OnError func(error)

	mu  sync.Mutex
	sub *nats.Subscription
	// dropped is how many messages the subscription had dropped as a slow
	// consumer when last looked at (by the sweeper's goroutine only).
	dropped int
	status  chan nats.Status
	done    chan struct{}
	stopped sync.WaitGroup
}

// NewWatcher returns a watcher for reg on nc. Nothing happens until Start.
func NewWatcher(nc *nats.Conn, reg *Registry) *Watcher {
	return &Watcher{nc: nc, reg: reg}
}

// Start subscribes and starts the sweeper. With a connection that is not
// connected yet (nats.RetryOnFailedConnect), the subscription is sent and
// discover published once it connects. Start on a started watcher is a
// no-op.
func (w *Watcher) Start() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done != nil {
		return nil
	}
	prefix := w.reg.prefix
	sub, err := w.nc.Subscribe(heartbeat.HeartbeatWildcard(prefix), func(msg *nats.Msg) {
		_ = w.reg.Observe(msg.Subject, msg.Data, time.Now())
	})
	if err != nil {
		return err
	}
	// A burst of heartbeats (thousands of instances answering a discover)
	// must not be dropped as a slow consumer.
	_ = sub.SetPendingLimits(1<<16, 64<<20)
	w.sub = sub
	w.status = w.nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	w.done = make(chan struct{})
	if w.nc.IsConnected() {
		// Make sure the server has the subscription before Start returns:
		// heartbeats published from then on are not missed.
		_ = w.nc.FlushTimeout(time.Second)
		// The registry may still be frozen from an earlier watcher that
		// stopped while disconnected; no CONNECTED status would thaw it.
		w.reg.Thaw(time.Now())
		w.discover()
	} else {
		w.reg.Freeze()
	}
	w.stopped.Add(1)
	go w.run(sub, w.status, w.done)
	return nil
}

func (w *Watcher) run(sub *nats.Subscription, status chan nats.Status, done chan struct{}) {
	defer w.stopped.Done()
	ticker := time.NewTicker(SweepInterval)
	defer ticker.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-ticker.C:
			w.followConnection()
			w.reportDropped(sub)
			w.reg.Sweep(now)
		case s, ok := <-status:
			if !ok {
				status = nil
				continue
			}
			w.onStatus(s)
		}
	}
}

func (w *Watcher) onStatus(s nats.Status) {
	switch s {
	case nats.CONNECTED:
		w.reg.Thaw(time.Now())
		w.discover()
	default:
		w.reg.Freeze()
	}
}

// followConnection catches up with the connection's state in case a
// status event was dropped (nats.go drops them when a listener lags).
func (w *Watcher) followConnection() {
	connected := w.nc.IsConnected()
	switch frozen := w.reg.Frozen(); {
	case !connected && !frozen:
		w.reg.Freeze()
	case connected && frozen:
		w.reg.Thaw(time.Now())
		w.discover()
	}
}

// reportDropped reports the messages NATS dropped since the last look
// (more arrived than the pending limits hold): they are rejections that
// no decoder saw, and must be counted like the others.
func (w *Watcher) reportDropped(sub *nats.Subscription) {
	n, err := sub.Dropped()
	if err != nil || n <= w.dropped {
		return
	}
	d := n - w.dropped
	w.dropped = n
	w.reg.emit(Event{Kind: EventRejected, Reason: "dropped", Count: d,
		Detail: fmt.Sprintf("%d messages dropped unread: heartbeats arrived faster than the gateway could process them (NATS slow consumer)", d)})
}

func (w *Watcher) discover() {
	err := w.nc.Publish(heartbeat.DiscoverSubject(w.reg.prefix), nil)
	if err != nil && w.OnError != nil {
		w.OnError(err)
	}
}

// Stop unsubscribes and stops the sweeper. The registry keeps its members.
func (w *Watcher) Stop() {
	w.mu.Lock()
	if w.done == nil {
		w.mu.Unlock()
		return
	}
	close(w.done)
	w.done = nil
	_ = w.sub.Unsubscribe()
	w.nc.RemoveStatusListener(w.status)
	w.mu.Unlock()
	w.stopped.Wait()
}
