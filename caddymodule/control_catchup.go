package caddymodule

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A watch of the control bucket can stall for about ten seconds when the
// NATS node serving its consumer dies while the gateway's own connection
// survives (the ordered consumer notices only by missed heartbeats). So
// a gateway announces the latest bucket revision it applied or wrote in
// its heartbeats (control_revision), at once after a write, and a peer
// that is behind reads the entries it missed by sequence: a JetStream
// direct get, which any replica of the bucket's stream answers, also
// while the stream elects a new leader.

// controlCatchUpMax bounds the entries one catch-up reads: writes are
// operator actions, rare.
const controlCatchUpMax = 64

// directGetTimeout bounds one direct get.
const directGetTimeout = 500 * time.Millisecond

// controlRevision is the latest bucket revision the service read or
// wrote, for its gateway heartbeat.
func (s *Service) controlRevision() int64 {
	c := s.control.Load()
	if c == nil {
		return 0
	}
	return int64(max(c.known.Load(), c.written.Load()))
}

// raise sets v to rev if rev is higher.
func raise(v *atomic.Uint64, rev uint64) {
	for {
		old := v.Load()
		if rev <= old || v.CompareAndSwap(old, rev) {
			return
		}
	}
}

// controlCatchUp reads the entries up to rev that a peer announced and
// this gateway has not seen, off the caller's goroutine, one catch-up at
// a time.
func (s *Service) controlCatchUp(rev int64) {
	c := s.control.Load()
	if c == nil || c.keyErr != nil || rev <= int64(c.known.Load()) || !c.isReleased() || c.fruitless(uint64(rev)) {
		return
	}
	if !c.catching.CompareAndSwap(false, true) {
		return
	}
	c.catchUps.Add(1)
	go func() {
		defer c.catchUps.Done()
		defer c.catching.Store(false)
		c.catchUp(uint64(rev))
	}()
}

// fruitlessWait is how long a catch-up that found nothing keeps another
// to the same target from being tried: a peer announcing a revision
// never written costs one read a second, not one per heartbeat of every
// peer, and cannot keep this gateway from catching up to a real one.
const fruitlessWait = time.Second

func (c *controlState) noteFruitless(target uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fruitlessTarget, c.fruitlessAt = target, time.Now()
}

// fruitless reports whether a catch-up to target found nothing lately.
func (c *controlState) fruitless(target uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return target == c.fruitlessTarget && time.Since(c.fruitlessAt) < fruitlessWait
}

func (c *controlState) isReleased() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.released
}

// catchUp applies the entries of this service's prefix after the latest
// revision known, as far as target (at most controlCatchUpMax of them);
// it stops when there are none or a read fails (the next heartbeat tries
// again). Only entries that exist advance the revision known, so a peer
// announcing a revision that was never written changes nothing here.
func (c *controlState) catchUp(target uint64) {
	seq := c.known.Load() + 1
	for n := 0; n < controlCatchUpMax && seq <= target && c.ctx.Err() == nil; n++ {
		e, err := c.nextEntry(seq)
		if err != nil {
			return
		}
		if e == nil {
			// nothing up to target: announced but never written; not
			// asked again for a while
			c.noteFruitless(target)
			return
		}
		if e.rev > target {
			return // newer than announced: the watcher or a later heartbeat brings it
		}
		raise(&c.known, e.rev)
		if id, ctl, ok := c.decode(e); ok {
			c.apply(id, ctl, e.rev)
		}
		seq = e.rev + 1
	}
}

// nextEntry reads the first entry of this service's prefix at or after
// seq; nil if there is none.
func (c *controlState) nextEntry(seq uint64) (*directEntry, error) {
	req, _ := json.Marshal(struct {
		Seq     uint64 `json:"seq"`
		NextFor string `json:"next_by_subj"`
	}{seq, "$KV." + ControlBucket + "." + c.s.prefix + ".*"})
	msg, err := c.bucket.nc.Request("$JS.API.DIRECT.GET.KV_"+ControlBucket, req, directGetTimeout)
	if err != nil {
		return nil, err
	}
	switch status := msg.Header.Get("Status"); status {
	case "":
	case "404":
		return nil, nil
	default:
		return nil, errors.New("direct get answered " + status + " " + msg.Header.Get("Description"))
	}
	key, ok := strings.CutPrefix(msg.Header.Get("Nats-Subject"), "$KV."+ControlBucket+".")
	rev, err := strconv.ParseUint(msg.Header.Get("Nats-Sequence"), 10, 64)
	if !ok || err != nil || rev < seq {
		return nil, errors.New("direct get answered without a subject or sequence of the bucket")
	}
	op := jetstream.KeyValuePut
	switch msg.Header.Get("KV-Operation") {
	case "DEL":
		op = jetstream.KeyValueDelete
	case "PURGE":
		op = jetstream.KeyValuePurge
	}
	return &directEntry{key: key, value: msg.Data, rev: rev, op: op}, nil
}

// directEntry is a bucket entry read by sequence.
type directEntry struct {
	key   string
	value []byte
	rev   uint64
	op    jetstream.KeyValueOp
}

func (e *directEntry) Bucket() string                  { return ControlBucket }
func (e *directEntry) Key() string                     { return e.key }
func (e *directEntry) Value() []byte                   { return e.value }
func (e *directEntry) Revision() uint64                { return e.rev }
func (e *directEntry) Created() time.Time              { return time.Time{} }
func (e *directEntry) Delta() uint64                   { return 0 }
func (e *directEntry) Operation() jetstream.KeyValueOp { return e.op }

// Interface guard.
var _ jetstream.KeyValueEntry = (*directEntry)(nil)
