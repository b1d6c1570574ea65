package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/caddy-cx/caddy-cx/membership"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ControlBucket is the JetStream key-value bucket in which operators'
// holds (drain, maintenance) are kept for every gateway of the fleet: key
// `<subject prefix>.<instance id>`, value a membership.Control.
const ControlBucket = "cx_control"

// controlHistory is how many revisions of each key the bucket keeps: who
// drained what, and when, is visible for the last few changes.
const controlHistory = 16

// controlReplicas is the bucket's replication on a cluster of at least as
// many servers: a NATS node dying loses no hold.
const controlReplicas = 3

// controlBuckets are the bucket handles, one per NATS connection, shared
// by the services on it.
var controlBuckets = struct {
	sync.Mutex
	m map[*nats.Conn]*controlBucket
}{m: map[*nats.Conn]*controlBucket{}}

// controlBucket is the control bucket on one NATS connection, opened (and
// created if missing) on first use, and again after a failure.
type controlBucket struct {
	nc    *nats.Conn
	users int

	mu sync.Mutex
	kv jetstream.KeyValue
}

func acquireBucket(nc *nats.Conn) *controlBucket {
	controlBuckets.Lock()
	defer controlBuckets.Unlock()
	b := controlBuckets.m[nc]
	if b == nil {
		b = &controlBucket{nc: nc}
		controlBuckets.m[nc] = b
	}
	b.users++
	return b
}

func (b *controlBucket) release() {
	controlBuckets.Lock()
	defer controlBuckets.Unlock()
	if b.users--; b.users <= 0 {
		delete(controlBuckets.m, b.nc)
	}
}

// open returns the bucket's handle, creating the bucket if it does not
// exist. An existing bucket is used as it is: another gateway (or an
// operator) may have set it up, and its config is not ours to change.
// warn is told when replication had to be lowered.
func (b *controlBucket) open(ctx context.Context, warn func(error)) (jetstream.KeyValue, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kv != nil {
		return b.kv, nil
	}
	js, err := jetstream.New(b.nc)
	if err != nil {
		return nil, err
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:      ControlBucket,
		Description: "caddy-cx: drain and maintenance of instances, key <subject prefix>.<instance id>",
		History:     controlHistory,
		Replicas:    1,
		// whoever may write the bucket must not fill JetStream's store:
		// an entry is at most MaxControlSize bytes (membership), and 64
		// MiB hold 16 revisions of some 20,000 instances
		MaxValueSize: membership.MaxControlSize,
		MaxBytes:     64 << 20,
	}
	if len(b.nc.Servers()) >= controlReplicas {
		cfg.Replicas = controlReplicas
	}
	kv, err := js.CreateKeyValue(ctx, cfg)
	if err != nil && cfg.Replicas > 1 && !errors.Is(err, jetstream.ErrBucketExists) && !jetStreamUnavailable(err, b.nc) {
		warn(err)
		cfg.Replicas = 1
		kv, err = js.CreateKeyValue(ctx, cfg)
	}
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, ControlBucket)
	}
	if err != nil {
		return nil, err
	}
	b.kv = kv
	return kv, nil
}

// forget drops the handle after the bucket went missing (deleted by
// hand), so that the next open creates it again. nats.go reports a
// deleted bucket's stream in several ways: a put finds no stream to
// answer it, a new watch the legacy "stream not found".
func (b *controlBucket) forget(err error) {
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrStreamNotFound) {
		b.mu.Lock()
		b.kv = nil
		b.mu.Unlock()
	}
}

// jetStreamUnavailable reports whether err says that the NATS servers (or
// the account) run without JetStream, as opposed to a passing failure.
// No responders means that only when the server nc is connected to says
// it runs without JetStream: a server that has it may not answer yet
// (just started, electing a leader), and taking that for "none" would
// release routing before the holds are read.
func jetStreamUnavailable(err error, nc *nats.Conn) bool {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return true
	}
	if !errors.Is(err, nats.ErrNoResponders) || !nc.IsConnected() {
		return false
	}
	enabled, _ := nc.ConnectedServerJetStream()
	return !enabled
}

// errNoJetStream is what an operator is told when the control bucket
// cannot exist on the NATS the gateway uses.
var errNoJetStream = errors.New("the NATS servers this gateway uses run without JetStream, which keeps drain and maintenance for every gateway: " +
	"enable JetStream on the NATS servers (`jetstream { store_dir ... }`) and for the gateway's account (`jetstream: enabled` in its account), " +
	"or use the gateway's embedded NATS (`cx { embedded_nats }`), which runs with JetStream")

// kvToken matches a key token of a JetStream KV bucket.
var kvToken = regexp.MustCompile(`^[-/_=a-zA-Z0-9]+$`)

// controlPrefixError says why prefix cannot name keys of the control
// bucket, or nil if it can.
func controlPrefixError(prefix string) error {
	for _, tok := range strings.Split(prefix, ".") {
		if !kvToken.MatchString(tok) {
			return fmt.Errorf("subject prefix %q cannot name keys of the %s bucket: token %q has characters other than A-Z a-z 0-9 - _ / =; "+
				"rename the prefix (like cx.ha) to drain or hold its instances", prefix, ControlBucket, tok)
		}
	}
	return nil
}
