package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// How the control follower waits: routing is released after controlRelease
// without a first read of the bucket (it never waits on a missing
// JetStream), a failed watch is retried every controlRetry, and the
// failure is logged at most every controlLogEvery.
var (
	controlRelease  = 2 * time.Second
	controlRetry    = 5 * time.Second
	controlLogEvery = 30 * time.Second
	// controlTimeout bounds one JetStream request (create, put).
	controlTimeout = 5 * time.Second
)

// maxControlEntries bounds the holds a service keeps: whoever may write
// the bucket must not be able to grow every gateway's memory without end.
const maxControlEntries = 1 << 16

// controlState follows the fleet's control bucket for one service: every
// key `<prefix>.*`, applied to the registry as it changes.
type controlState struct {
	s      *Service
	bucket *controlBucket
	// keyErr is set when the prefix cannot name keys of the bucket.
	keyErr error
	logs   *logLimiter

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// following is true while a watcher delivers the bucket's changes
	// (after its first full read).
	following atomic.Bool
	// rejected counts bucket values that failed to decode.
	rejected atomic.Uint64
	// known is the latest bucket revision read in order (by the watcher
	// or a catch-up), written the latest written here; catching is set
	// while a catch-up reads what a peer announced (control_catchup.go).
	known    atomic.Uint64
	written  atomic.Uint64
	catching atomic.Bool
	catchUps sync.WaitGroup

	mu sync.Mutex
	// released is set once the registry got its first controls (the
	// bucket's, or none when the bucket is out of reach).
	released bool
	// revisions are the bucket revisions applied per id, so that a local
	// write applied after a newer one arrived does not undo it.
	revisions map[string]uint64
	// fruitlessTarget and fruitlessAt: the last catch-up that found
	// nothing up to its target, and when.
	fruitlessTarget uint64
	fruitlessAt     time.Time
}

// startControl starts following the control bucket on nc. The registry
// holds routing until the first read (AwaitControls), for at most
// controlRelease.
func (s *Service) startControl(nc *nats.Conn) {
	c := &controlState{s: s, logs: oncePer(controlLogEvery), done: make(chan struct{}), revisions: map[string]uint64{}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if c.keyErr = controlPrefixError(s.prefix); c.keyErr != nil {
		s.log.logger.Warn("drain and maintenance are unavailable for this service", zap.Error(c.keyErr))
		s.reg.SetControls(nil)
		close(c.done)
		s.control.Store(c)
		return
	}
	c.bucket = acquireBucket(nc)
	// published whole: admin requests read it without the service's lock
	s.control.Store(c)
	go c.run()
}

// stopControl stops following it.
func (s *Service) stopControl() {
	c := s.control.Load()
	if c == nil {
		return
	}
	c.cancel()
	<-c.done
	c.catchUps.Wait()
	c.following.Store(false)
	if c.bucket != nil {
		c.bucket.release()
	}
}

// controlFollowing reports whether the service follows the control bucket
// now (for the gateway heartbeat's control field).
func (s *Service) controlFollowing() bool {
	c := s.control.Load()
	return c != nil && c.following.Load() && c.bucket.nc.IsConnected()
}

// run watches the bucket, again and again: after a failure to open it or
// to watch it, and when a watcher stops.
func (c *controlState) run() {
	defer close(c.done)
	release := time.AfterFunc(controlRelease, c.releaseRouting)
	defer release.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-retry.C:
		}
		err := c.follow()
		c.following.Store(false)
		if c.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errReconnected) {
			retry.Reset(0)
			continue
		}
		if err != nil {
			c.bucket.forget(err)
			if jetStreamUnavailable(err, c.bucket.nc) {
				c.releaseRouting()
			}
			if held, ok := c.logs.due("watch", time.Now()); ok {
				c.s.log.logger.Warn("cannot follow the control bucket; routing runs without drain and maintenance holds, retrying",
					zap.String("bucket", ControlBucket), zap.String("problem", natsProblem(err)), zap.Error(err),
					zap.Duration("retry", controlRetry), zap.Int("held_back", held))
			}
		}
		retry.Reset(controlRetry)
	}
}

// releaseRouting lets routing run without the bucket's first read, once.
func (c *controlState) releaseRouting() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.released || c.ctx.Err() != nil {
		return
	}
	c.released = true
	c.s.reg.SetControls(nil)
}

// follow opens the bucket and applies what the watcher delivers until it
// stops (its subscription closed) or the service stops.
func (c *controlState) follow() error {
	ctx, cancel := context.WithTimeout(c.ctx, controlTimeout)
	kv, err := c.bucket.open(ctx, func(err error) {
		c.s.log.logger.Warn("cannot create the control bucket with 3 replicas; creating it with 1 (a NATS node dying may lose drain and maintenance holds)",
			zap.String("bucket", ControlBucket), zap.Error(err))
	})
	cancel()
	if err != nil {
		return err
	}
	// A reconnect starts a fresh watcher at once: the ordered consumer
	// would notice a restarted server only after missing its heartbeats
	// (about 10 s), and a fresh one reads the bucket whole again.
	status := c.bucket.nc.StatusChanged(nats.RECONNECTING, nats.CONNECTED)
	defer c.bucket.nc.RemoveStatusListener(status)
	w, err := kv.Watch(c.ctx, c.s.prefix+".*")
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	initial := map[string]membership.Control{}
	revs := map[string]uint64{}
	synced := false
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-c.ctx.Done():
			return nil
		case st := <-status:
			if st == nats.CONNECTED {
				return errReconnected
			}
			c.following.Store(false)
			continue
		case e, ok = <-w.Updates():
		}
		if !ok {
			return errWatchStopped
		}
		if e == nil { // the initial values are all read
			if !synced {
				synced = true
				c.sync(initial, revs)
			}
			continue
		}
		raise(&c.known, e.Revision())
		id, ctl, ok := c.decode(e)
		if !ok {
			continue
		}
		if !synced {
			if _, known := revs[id]; !known && len(revs) >= maxControlEntries {
				c.reject(fmt.Errorf("more than %d control entries", maxControlEntries), e)
				continue
			}
			revs[id] = e.Revision()
			if ctl.State == membership.ControlReady {
				delete(initial, id)
			} else {
				initial[id] = ctl
			}
			continue
		}
		c.apply(id, ctl, e.Revision())
	}
}

// sync applies the bucket as the watcher first read it. Entries applied
// here later than that read (a write through this gateway, a catch-up)
// are kept: the watcher delivers them after the read, and until then the
// hold the admin API confirmed must stay.
func (c *controlState) sync(initial map[string]membership.Control, revs map[string]uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	read := uint64(0)
	for _, rev := range revs {
		read = max(read, rev)
	}
	current := c.s.reg.Controls()
	for id, rev := range c.revisions {
		if rev > read && rev > revs[id] {
			revs[id] = rev
			if ctl, held := current[id]; held {
				initial[id] = ctl
			} else {
				delete(initial, id)
			}
		}
	}
	// a bucket created anew starts its revisions again
	c.known.Store(read)
	c.revisions, c.released = revs, true
	c.s.reg.SetControls(initial)
	c.following.Store(true)
}

// errReconnected: the connection came back; watch afresh.
var errReconnected = errors.New("reconnected to NATS")

// errWatchStopped: the watcher's subscription closed under it.
var errWatchStopped = errors.New("the control bucket's watcher stopped")

// decode returns the id and entry of a bucket change; a delete or purge is
// ready. A value that does not decode is hostile or from a newer version:
// it is counted, logged (bounded) and ignored.
func (c *controlState) decode(e jetstream.KeyValueEntry) (string, membership.Control, bool) {
	id, ok := strings.CutPrefix(e.Key(), c.s.prefix+".")
	if !ok || !heartbeat.ValidID(id) {
		c.reject(fmt.Errorf("key is not <prefix>.<instance id>"), e)
		return "", membership.Control{}, false
	}
	if e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge {
		return id, membership.Control{State: membership.ControlReady}, true
	}
	ctl, err := membership.ParseControl(e.Value())
	if err != nil {
		c.reject(err, e)
		return "", membership.Control{}, false
	}
	return id, ctl, true
}

func (c *controlState) reject(err error, e jetstream.KeyValueEntry) {
	c.rejected.Add(1)
	if held, ok := c.logs.due("value", time.Now()); ok {
		c.s.log.logger.Warn("ignored a control bucket entry",
			zap.String("bucket", ControlBucket), zap.Uint64("revision", e.Revision()), zap.Error(err), zap.Int("held_back", held))
	}
}

// apply sets id's entry at bucket revision rev, unless a later revision
// was applied already.
func (c *controlState) apply(id string, ctl membership.Control, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	have, known := c.revisions[id]
	if rev <= have {
		return
	}
	if !known && len(c.revisions) >= maxControlEntries {
		c.rejected.Add(1)
		return
	}
	c.revisions[id] = rev
	// under c.mu: two applies of one id must reach the registry in order.
	c.s.reg.SetControl(id, ctl)
}

// ControlStatus is an instance's control entry in a status report.
type ControlStatus struct {
	State   string    `json:"state"`
	By      string    `json:"by"`
	Gateway string    `json:"gateway"`
	At      time.Time `json:"at"`
	// Holds is true while the entry keeps the instance out of routing: a
	// drain of an earlier process no longer does.
	Holds bool `json:"holds"`
}

// errControlUnavailable is answered for a service without control.
type errControlUnavailable struct{ err error }

func (e errControlUnavailable) Error() string { return e.err.Error() }
func (e errControlUnavailable) Unwrap() error { return e.err }

// setControl writes id's control entry for the fleet and applies it here
// before returning, with the bucket revision it was written at.
func (s *Service) setControl(ctx context.Context, id string, state membership.ControlState, by string) (membership.Control, uint64, error) {
	c := s.control.Load()
	if c == nil {
		return membership.Control{}, 0, errControlUnavailable{errors.New("the service is not connected to NATS yet")}
	}
	if c.keyErr != nil {
		return membership.Control{}, 0, errControlUnavailable{c.keyErr}
	}
	ctl := membership.Control{State: state, By: by, Gateway: s.gatewayID(), At: time.Now().UTC().Truncate(time.Millisecond)}
	if state == membership.ControlDrain {
		m, ok := s.reg.Member(id)
		if !ok {
			return ctl, 0, errUnknownInstance
		}
		ctl.Process = m.StartedAt
	}
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	kv, err := c.bucket.open(ctx, func(error) {})
	if err != nil {
		return ctl, 0, c.writeError(err)
	}
	rev, err := kv.Put(ctx, s.prefix+"."+id, ctl.Encode())
	if err != nil {
		c.bucket.forget(err)
		return ctl, 0, c.writeError(err)
	}
	c.apply(id, ctl, rev)
	raise(&c.written, rev)
	// peers whose watch stalls read it by revision (control_catchup.go)
	s.announceSoon()
	return ctl, rev, nil
}

// errUnknownInstance: a drain names the process it holds, so it needs one.
var errUnknownInstance = errors.New("unknown instance")

// writeError is what a failed write tells the operator.
func (c *controlState) writeError(err error) error {
	if jetStreamUnavailable(err, c.bucket.nc) {
		return errControlUnavailable{errNoJetStream}
	}
	return errControlUnavailable{fmt.Errorf("writing the %s bucket on NATS: %w", ControlBucket, err)}
}

// controlStatus is m's control entry for a status report, if one is set.
func controlStatus(m membership.Member) *ControlStatus {
	ctl := m.Control
	if ctl.State == "" || ctl.State == membership.ControlReady {
		return nil
	}
	return &ControlStatus{State: string(ctl.State), By: ctl.By, Gateway: ctl.Gateway, At: jsonSafeTime(ctl.At), Holds: ctl.Holds(&m)}
}
