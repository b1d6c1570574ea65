package heartbeat

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// DefaultInterval is the heartbeat period used when Config.Interval is zero.
const DefaultInterval = time.Second

const (
	// discoverMaxDelay bounds the random delay before answering a discover.
	discoverMaxDelay = 100 * time.Millisecond
	// leaveFlushTimeout bounds how long Leave waits for the server to
	// confirm that it got the leaving message.
	leaveFlushTimeout = time.Second
)

// ErrStopped is returned by Publisher methods called after Leave or Stop.
var ErrStopped = errors.New("heartbeat: publisher stopped")

// errNotConnected is why a heartbeat was skipped: heartbeats are never
// buffered for replay.
var errNotConnected = errors.New("heartbeat: not connected to NATS")

// Config configures a Publisher.
type Config struct {
	// Prefix is the subject prefix; empty means DefaultPrefix.
	Prefix string
	// ID is the instance id (see ValidID); required.
	ID string
	// URL is where the gateway sends this instance's traffic,
	// http(s)://host:port (see ValidURL); required.
	URL string
	// Interval is the heartbeat period, 100ms to 60s, truncated to whole
	// milliseconds; zero means DefaultInterval.
	Interval time.Duration
	// Version is the application's version, at most 64 characters; optional.
	Version string
	// Priority is -1000 to 1000, lower is preferred; optional.
	Priority int
	// LeaderRoles are the background-work roles this instance holds at
	// start; optional, at most 16 of 1 to 64 characters.
	LeaderRoles []string
	// Meta is shown by the gateway for display only; optional, at most 16
	// entries, keys at most 64 and values at most 256 characters.
	Meta map[string]string
	// Logger receives the publisher's logs; nil discards them.
	Logger *slog.Logger
}

// ConfigError is why a Config is not valid. Field names the Config field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return "heartbeat: invalid config: " + e.Field + ": " + e.Reason
}

// Publisher publishes the heartbeats of one instance process on
// PREFIX.hb.ID and answers discovers on PREFIX.discover. Its methods are
// safe for concurrent use. It never replays: a heartbeat due while the
// connection is down is skipped, and a fresh one goes out on reconnect;
// likewise nothing published while paused (see Pause) is sent later.
type Publisher struct {
	nc       *nats.Conn
	log      *slog.Logger
	subject  string
	discover string
	interval time.Duration
	base     Message // the fields fixed for the life of the process

	discoverCh chan struct{}
	resumed    chan struct{} // tells run to restart the periodic timer
	done       chan struct{}
	wg         sync.WaitGroup

	mu      sync.Mutex
	state   State
	roles   []string
	meta    map[string]string
	seq     int64
	started bool
	stopped bool
	paused  bool
	sub     *nats.Subscription
	status  chan nats.Status
}

// NewPublisher validates cfg and returns a Publisher in state ready that
// publishes on nc once started. started_at is fixed now. Errors are
// *ConfigError naming the offending Config field. nc should not buffer
// while reconnecting (see Connect); the Publisher checks the connection
// before every publish either way.
func NewPublisher(nc *nats.Conn, cfg Config) (*Publisher, error) {
	if nc == nil {
		return nil, &ConfigError{Field: "nc", Reason: "NATS connection is nil"}
	}
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	startedAt := time.Now().UTC()
	if startedAt.Nanosecond() == 0 {
		// RFC3339Nano would drop a zero fraction; the protocol wants one.
		startedAt = startedAt.Add(time.Nanosecond)
	}
	p := &Publisher{
		nc:       nc,
		log:      cfg.Logger,
		subject:  HeartbeatSubject(cfg.Prefix, cfg.ID),
		discover: DiscoverSubject(cfg.Prefix),
		interval: cfg.Interval,
		base: Message{
			Proto:      Proto,
			ID:         cfg.ID,
			URL:        cfg.URL,
			StartedAt:  startedAt,
			IntervalMS: int(cfg.Interval / time.Millisecond),
			Version:    cfg.Version,
			Priority:   cfg.Priority,
		},
		discoverCh: make(chan struct{}, 1),
		resumed:    make(chan struct{}, 1),
		done:       make(chan struct{}),
		state:      StateReady,
		roles:      cloneRoles(cfg.LeaderRoles),
		meta:       cloneMeta(cfg.Meta),
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("subject", p.subject)
	if err := p.check(p.roles, p.meta); err != nil {
		field := "Version"
		switch {
		case len(p.meta) > 0:
			field = "Meta"
		case len(p.roles) > 0:
			field = "LeaderRoles"
		}
		return nil, &ConfigError{Field: field, Reason: err.Error()}
	}
	return p, nil
}

func (c *Config) normalize() error {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if err := ValidPrefix(c.Prefix); err != nil {
		return &ConfigError{Field: "Prefix", Reason: err.Error()}
	}
	if c.ID == "" {
		return &ConfigError{Field: "ID", Reason: "required"}
	}
	if !ValidID(c.ID) {
		return &ConfigError{Field: "ID", Reason: fmt.Sprintf("%q is not 1 to %d characters of A-Z a-z 0-9 _ -", Truncate(c.ID, 80), MaxIDLen)}
	}
	if c.URL == "" {
		return &ConfigError{Field: "URL", Reason: "required"}
	}
	if err := ValidURL(c.URL); err != nil {
		return &ConfigError{Field: "URL", Reason: reason(err)}
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Interval < MinIntervalMS*time.Millisecond || c.Interval > MaxIntervalMS*time.Millisecond {
		return &ConfigError{Field: "Interval", Reason: fmt.Sprintf("%v is not 100ms to 60s", c.Interval)}
	}
	c.Interval = c.Interval.Truncate(time.Millisecond)
	if utf8.RuneCountInString(c.Version) > MaxVersionLen {
		return &ConfigError{Field: "Version", Reason: fmt.Sprintf("longer than %d characters", MaxVersionLen)}
	}
	if c.Priority < MinPriority || c.Priority > MaxPriority {
		return &ConfigError{Field: "Priority", Reason: fmt.Sprintf("%d is not %d to %d", c.Priority, MinPriority, MaxPriority)}
	}
	if err := validRoles(c.LeaderRoles); err != nil {
		return &ConfigError{Field: "LeaderRoles", Reason: reason(err)}
	}
	if err := validMeta(c.Meta); err != nil {
		return &ConfigError{Field: "Meta", Reason: reason(err)}
	}
	return nil
}

func reason(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return err.Error()
}

func cloneRoles(roles []string) []string {
	if len(roles) == 0 {
		return nil
	}
	return slices.Clone(roles)
}

func cloneMeta(meta map[string]string) map[string]string {
	if len(meta) == 0 {
		return nil
	}
	return maps.Clone(meta)
}

// message is the heartbeat to publish now. p.mu must be held.
func (p *Publisher) message(seq int64, roles []string, meta map[string]string) *Message {
	m := p.base
	m.State = p.state
	m.Seq = seq
	m.LeaderRoles = roles
	m.Meta = meta
	return &m
}

// check reports whether heartbeats carrying roles and meta are valid, in
// the longest form they can take (largest seq, longest state).
func (p *Publisher) check(roles []string, meta map[string]string) error {
	m := p.message(MaxSeq, roles, meta)
	m.State = StateDraining
	data, err := Encode(m)
	if err != nil {
		return err
	}
	_, err = Parse(data)
	return err
}

// Start subscribes to discovers, publishes the first heartbeat at once and
// then one every Interval. Call it once the instance accepts connections at
// its URL. If NATS is not connected yet, the first heartbeat goes out when
// it connects. A Publisher paused before Start publishes nothing until
// Resume.
func (p *Publisher) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return ErrStopped
	}
	if p.started {
		return errors.New("heartbeat: publisher already started")
	}
	sub, err := p.nc.Subscribe(p.discover, func(*nats.Msg) {
		select {
		case p.discoverCh <- struct{}{}:
		default: // an answer is already pending
		}
	})
	if err != nil {
		return fmt.Errorf("heartbeat: subscribe to %s: %w", p.discover, err)
	}
	p.sub = sub
	// Registered before the first publish: if NATS is not connected now,
	// the connect that follows is seen.
	p.status = p.nc.StatusChanged(nats.CONNECTED)
	p.started = true
	p.wg.Add(1)
	go p.run(p.status)
	_ = p.publishLocked("start")
	return nil
}

// run publishes periodically, on reconnect and in answer to discovers,
// until p.done is closed.
func (p *Publisher) run(status <-chan nats.Status) {
	defer p.wg.Done()
	ticker := time.NewTicker(p.interval)
	defer ticker.Stop()
	var answer <-chan time.Time // non-nil while a discover answer is pending
	for {
		select {
		case <-p.done:
			return
		case <-ticker.C:
			p.publish("interval")
		case <-p.resumed:
			// Resume has just published: the next periodic heartbeat
			// is due one interval from now.
			ticker.Reset(p.interval)
		case s, ok := <-status:
			if !ok {
				status = nil
			} else if s == nats.CONNECTED {
				p.publish("connected")
			}
		case <-p.discoverCh:
			if answer == nil {
				answer = time.After(rand.N(discoverMaxDelay + 1))
			}
		case <-answer:
			answer = nil
			p.publish("discover")
		}
	}
}

func (p *Publisher) publish(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped {
		_ = p.publishLocked(reason)
	}
}

// errPaused is why a heartbeat was suppressed: the Publisher is paused.
var errPaused = errors.New("heartbeat: publisher paused")

// publishLocked publishes the current heartbeat unless the Publisher is
// paused or NATS is disconnected; seq counts only what was handed to the
// connection. p.mu must be held.
func (p *Publisher) publishLocked(reason string) error {
	if p.paused {
		p.log.Debug("heartbeat suppressed: paused", "reason", reason)
		return errPaused
	}
	if !p.nc.IsConnected() {
		p.log.Debug("heartbeat skipped: not connected to NATS", "reason", reason)
		return errNotConnected
	}
	m := p.message(p.seq+1, p.roles, p.meta)
	data, err := Encode(m)
	if err == nil {
		err = p.nc.Publish(p.subject, data)
	}
	if err != nil {
		p.log.Warn("heartbeat not published", "reason", reason, "seq", m.Seq, "error", err)
		return err
	}
	p.seq = m.Seq
	p.log.Debug("heartbeat published", "reason", reason, "seq", m.Seq, "state", m.State)
	return nil
}

// SetState sets the state to StateReady or StateDraining and, when it
// changes on a started Publisher, publishes at once (while paused, the
// new state goes out with the heartbeat of Resume). Use Leave to leave.
func (p *Publisher) SetState(s State) error {
	if s != StateReady && s != StateDraining {
		return fmt.Errorf("heartbeat: SetState(%q): only %q or %q (use Leave to leave)", s, StateReady, StateDraining)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return ErrStopped
	}
	if p.state == s {
		return nil
	}
	p.state = s
	if p.started {
		_ = p.publishLocked("state")
	}
	return nil
}

// Pause stops publishing without leaving: periodic heartbeats, state and
// leader role changes, reconnects and discover answers publish nothing,
// and seq does not advance, until Resume. It is meant for an instance
// that is alive but unhealthy (e.g. its health check fails): silent, it
// turns stale at the gateway after stale_after and is taken out of
// routing, yet when it recovers, Resume brings it back as the same
// process (same started_at, next seq), which the gateway sees as a stale
// instance becoming ready again, not as a restart (which Stop followed by
// a new Publisher would be: a new started_at, seq from 1).
//
// Pause is idempotent and does nothing after Leave or Stop. Leave while
// paused still publishes leaving, since the process is going away.
func (p *Publisher) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.paused {
		return
	}
	p.paused = true
	p.log.Debug("heartbeats paused", "seq", p.seq)
}

// Resume ends a Pause: on a started Publisher it publishes a heartbeat at
// once, carrying the current state, roles and metadata with the same
// started_at and the next seq, and the periodic heartbeats resume one
// Interval after it. The gateway thus routes the instance again as soon
// as it hears that heartbeat, as the same process it knew. If NATS is
// disconnected, the heartbeat goes out on reconnect, as usual.
//
// Resume is idempotent (it publishes nothing when not paused) and does
// nothing after Leave or Stop.
func (p *Publisher) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || !p.paused {
		return
	}
	p.paused = false
	if !p.started {
		return // Start publishes the first heartbeat
	}
	_ = p.publishLocked("resume")
	select {
	case p.resumed <- struct{}{}:
	default: // a reset of the timer is already pending
	}
}

// Paused reports whether the Publisher is paused (see Pause).
func (p *Publisher) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// State returns the current state: StateLeaving after Leave.
func (p *Publisher) State() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// SetLeaderRoles sets the roles this instance holds now and, when they
// change on a started Publisher, publishes at once (while paused, with the
// heartbeat of Resume). Roles beyond the protocol's limits are refused:
// logged, the previous roles kept.
func (p *Publisher) SetLeaderRoles(roles []string) {
	roles = cloneRoles(roles)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || slices.Equal(p.roles, roles) {
		return
	}
	if err := p.check(roles, p.meta); err != nil {
		p.log.Error("heartbeat: leader roles refused, previous ones kept", "roles", roles, "error", err)
		return
	}
	p.roles = roles
	if p.started {
		_ = p.publishLocked("leader roles")
	}
}

// SetMeta sets the display metadata carried from the next heartbeat on.
// Metadata beyond the protocol's limits is refused: logged, the previous
// metadata kept.
func (p *Publisher) SetMeta(meta map[string]string) {
	meta = cloneMeta(meta)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	if err := p.check(p.roles, meta); err != nil {
		p.log.Error("heartbeat: meta refused, previous kept", "error", err)
		return
	}
	p.meta = meta
}

// Seq returns the seq of the last heartbeat published, 0 if none.
func (p *Publisher) Seq() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq
}

// StartedAt returns the started_at of this process's heartbeats.
func (p *Publisher) StartedAt() time.Time {
	return p.base.StartedAt
}

// Leave publishes state leaving, the last message of this Publisher, waits
// up to a second for the server to confirm it, and stops. It returns an
// error if leaving could not be announced (the gateway then notices the
// silence after its stale_after). A paused Publisher publishes leaving
// too: the process is going away, and the gateway should know at once
// rather than after stale_after. A Publisher never started publishes
// nothing. Leave is idempotent; after Leave or Stop it does nothing.
func (p *Publisher) Leave() error {
	return p.shutdown(true)
}

// Stop stops publishing without announcing leaving, as a crash would. It
// is idempotent.
func (p *Publisher) Stop() {
	_ = p.shutdown(false)
}

func (p *Publisher) shutdown(leave bool) error {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return nil
	}
	p.stopped = true // from here on nothing more is published
	var err error
	if leave {
		p.state = StateLeaving
		p.paused = false // leaving is published even while paused
		if p.started {
			err = p.publishLocked("leave")
		}
	}
	started, sub, status := p.started, p.sub, p.status
	p.mu.Unlock()

	close(p.done)
	if started {
		p.wg.Wait()
		_ = sub.Unsubscribe()
		p.nc.RemoveStatusListener(status)
	}
	if leave && started && err == nil {
		if ferr := p.nc.FlushTimeout(leaveFlushTimeout); ferr != nil {
			err = fmt.Errorf("heartbeat: leaving published but not confirmed: %w", ferr)
		}
	}
	if err != nil && leave {
		p.log.Warn("heartbeat: leaving not announced", "error", err)
	}
	return err
}
