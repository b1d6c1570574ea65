package heartbeat

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func testConfig(interval time.Duration) Config {
	return Config{
		ID:          "app1",
		URL:         "http://10.0.0.11:8080",
		Interval:    interval,
		Version:     "2026.4.1",
		Priority:    -5,
		LeaderRoles: []string{"email-dispatcher"},
		Meta:        map[string]string{"license": "ok"},
	}
}

func connect(t *testing.T, s *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// newStarted returns a started Publisher on s and a listener on its subject.
func newStarted(t *testing.T, s *server.Server, cfg Config) (*Publisher, *listener) {
	t.Helper()
	l := listen(t, s, HeartbeatSubject(DefaultPrefix, cfg.ID))
	p, err := NewPublisher(connect(t, s), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	return p, l
}

func TestPublisherFirstHeartbeat(t *testing.T) {
	s := startServer(t, -1)
	before := time.Now()
	p, l := newStarted(t, s, testConfig(time.Minute))
	if got := p.Seq(); got != 1 {
		t.Errorf("Seq() after Start = %d, want 1", got)
	}
	m := l.next(wait)
	want := &Message{
		Proto: 1, ID: "app1", URL: "http://10.0.0.11:8080", State: StateReady,
		StartedAt: p.StartedAt(), Seq: 1, IntervalMS: 60000, Version: "2026.4.1", Priority: -5,
		LeaderRoles: []string{"email-dispatcher"}, Meta: map[string]string{"license": "ok"},
	}
	if !sameMessage(m, want) {
		t.Errorf("first heartbeat\ngot  %+v\nwant %+v", m, want)
	}
	if m.StartedAt.Before(before.Add(-time.Second)) || m.StartedAt.After(time.Now()) || m.StartedAt.Location() != time.UTC {
		t.Errorf("started_at %v is not now in UTC", m.StartedAt)
	}
	if m.StartedAt.Nanosecond() == 0 {
		t.Errorf("started_at %v has no sub-second precision", m.StartedAt)
	}
	if err := p.Start(); err == nil {
		t.Error("second Start succeeded")
	}
}

func TestPublisherPeriodic(t *testing.T) {
	s := startServer(t, -1)
	_, l := newStarted(t, s, testConfig(100*time.Millisecond))
	for want := int64(1); want <= 4; want++ {
		if m := l.next(wait); m.Seq != want || m.State != StateReady {
			t.Fatalf("heartbeat %d: seq %d state %s", want, m.Seq, m.State)
		}
	}
}

func TestPublisherDiscover(t *testing.T) {
	s := startServer(t, -1)
	_, l := newStarted(t, s, testConfig(time.Minute))
	l.next(wait)
	for want := int64(2); want <= 3; want++ {
		if err := l.nc.Publish(DiscoverSubject(DefaultPrefix), nil); err != nil {
			t.Fatal(err)
		}
		if m := l.next(time.Second); m.Seq != want {
			t.Fatalf("answer to discover: seq %d, want %d", m.Seq, want)
		}
	}
}

func TestPublisherSetState(t *testing.T) {
	s := startServer(t, -1)
	p, l := newStarted(t, s, testConfig(time.Minute))
	l.next(wait)
	if err := p.SetState(StateDraining); err != nil {
		t.Fatal(err)
	}
	if p.Seq() != 2 || p.State() != StateDraining {
		t.Errorf("after SetState: seq %d state %s", p.Seq(), p.State())
	}
	if m := l.next(wait); m.Seq != 2 || m.State != StateDraining {
		t.Fatalf("after SetState: seq %d state %s", m.Seq, m.State)
	}
	if err := p.SetState(StateDraining); err != nil || p.Seq() != 2 {
		t.Errorf("SetState without change: %v, seq %d", err, p.Seq())
	}
	for _, bad := range []State{StateLeaving, "sleeping", ""} {
		if err := p.SetState(bad); err == nil {
			t.Errorf("SetState(%q) succeeded", bad)
		}
	}
	p.SetLeaderRoles([]string{"a", "b"})
	if m := l.next(wait); m.Seq != 3 || strings.Join(m.LeaderRoles, ",") != "a,b" {
		t.Fatalf("after SetLeaderRoles: %+v", m)
	}
	p.SetLeaderRoles([]string{"a", "b"})
	p.SetLeaderRoles(roles(MaxRoles+1, 3))  // refused
	p.SetMeta(meta(MaxMetaEntries+1, 2, 2)) // refused
	p.SetMeta(map[string]string{"license": "expired"})
	if p.Seq() != 3 {
		t.Errorf("seq %d: unchanged roles or SetMeta published", p.Seq())
	}
	if err := p.SetState(StateReady); err != nil {
		t.Fatal(err)
	}
	m := l.next(wait)
	if m.Seq != 4 || m.State != StateReady || len(m.LeaderRoles) != 2 || m.Meta["license"] != "expired" {
		t.Fatalf("after SetMeta and SetState: %+v", m)
	}
}

func TestPublisherLeave(t *testing.T) {
	s := startServer(t, -1)
	p, l := newStarted(t, s, testConfig(100*time.Millisecond))
	l.next(wait)
	l.next(wait) // a periodic one: the ticker runs
	if err := p.Leave(); err != nil {
		t.Fatal(err)
	}
	ms := l.rest()
	if len(ms) == 0 {
		t.Fatal("no leaving message")
	}
	last := ms[len(ms)-1]
	if last.State != StateLeaving || last.Seq != p.Seq() {
		t.Errorf("last message seq %d state %s; Seq() %d", last.Seq, last.State, p.Seq())
	}
	if err := p.Leave(); err != nil {
		t.Errorf("second Leave: %v", err)
	}
	p.Stop()
	if err := p.SetState(StateReady); !errors.Is(err, ErrStopped) {
		t.Errorf("SetState after Leave: %v", err)
	}
	p.SetLeaderRoles([]string{"x"})
	if err := l.nc.Publish(DiscoverSubject(DefaultPrefix), nil); err != nil {
		t.Fatal(err)
	}
	// Not a synchronisation: the ticker (100ms) and a discover answer
	// (at most 100ms) would both show up in this window.
	select {
	case msg := <-l.ch:
		t.Fatalf("published after leaving: %s", msg.Data)
	case <-time.After(300 * time.Millisecond):
	}
	if p.State() != StateLeaving || p.Seq() != last.Seq {
		t.Errorf("after Leave: state %s seq %d", p.State(), p.Seq())
	}
	if err := p.Start(); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Leave: %v", err)
	}
}

func TestPublisherStop(t *testing.T) {
	s := startServer(t, -1)
	p, l := newStarted(t, s, testConfig(time.Minute))
	p.Stop()
	p.Stop()
	if err := p.Leave(); err != nil {
		t.Errorf("Leave after Stop: %v", err)
	}
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ms := l.rest()
	if len(ms) != 1 || ms[0].State != StateReady {
		t.Errorf("after Stop and Leave: %d messages, want only the first", len(ms))
	}
}

// TestPublisherReconnect restarts the server on the same port: the
// heartbeat skipped while disconnected is not counted, and a fresh one
// goes out on reconnect.
func TestPublisherReconnect(t *testing.T) {
	s1 := startServer(t, -1)
	port := serverPort(t, s1)
	g := &gate{}
	g.open.Store(true)
	nc := connect(t, s1, nats.SetCustomDialer(g), nats.ReconnectWait(10*time.Millisecond), nats.ReconnectJitter(0, 0))
	p, err := NewPublisher(nc, testConfig(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	l1 := listen(t, s1, HeartbeatSubject(DefaultPrefix, "app1"))
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	l1.next(wait)

	reconnecting := nc.StatusChanged(nats.RECONNECTING)
	defer nc.RemoveStatusListener(reconnecting)
	g.open.Store(false)
	s1.Shutdown()
	select {
	case <-reconnecting:
	case <-time.After(wait):
		t.Fatal("client did not notice the server going away")
	}
	if err := p.SetState(StateDraining); err != nil {
		t.Fatal(err)
	}
	if p.Seq() != 1 {
		t.Errorf("seq %d: a heartbeat was counted while disconnected", p.Seq())
	}

	s2 := startServer(t, port)
	l2 := listen(t, s2, HeartbeatSubject(DefaultPrefix, "app1"))
	g.open.Store(true)
	m := l2.next(wait)
	if m.Seq != 2 || m.State != StateDraining || !m.StartedAt.Equal(p.StartedAt()) {
		t.Errorf("after reconnect: %+v", m)
	}
}

// TestPublisherStartBeforeConnected: Start while NATS is unreachable; the
// first heartbeat goes out when the connection comes up.
func TestPublisherStartBeforeConnected(t *testing.T) {
	s := startServer(t, -1)
	g := &gate{} // closed
	nc := connect(t, s, nats.SetCustomDialer(g), nats.ReconnectWait(10*time.Millisecond), nats.ReconnectJitter(0, 0))
	p, err := NewPublisher(nc, testConfig(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	l := listen(t, s, HeartbeatSubject(DefaultPrefix, "app1"))
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if p.Seq() != 0 {
		t.Errorf("seq %d before connecting", p.Seq())
	}
	g.open.Store(true)
	if m := l.next(wait); m.Seq != 1 {
		t.Errorf("first heartbeat after connecting: seq %d", m.Seq)
	}
}

func TestPublisherConcurrent(t *testing.T) {
	s := startServer(t, -1)
	p, l := newStarted(t, s, testConfig(100*time.Millisecond))
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 50 {
				_ = p.SetState([]State{StateReady, StateDraining}[(i+j)%2])
				if (i+j)%3 == 0 {
					p.Pause()
				} else {
					p.Resume()
				}
				p.SetLeaderRoles(roles(j%3, 4))
				p.SetMeta(map[string]string{"j": strings.Repeat("x", j)})
				_ = p.State()
				_ = p.Seq()
				_ = l.nc.Publish(DiscoverSubject(DefaultPrefix), nil)
			}
		})
	}
	wg.Wait()
	wg.Go(p.Stop)
	wg.Go(func() { _ = p.Leave() })
	wg.Wait()
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ms := l.rest()
	for i := 1; i < len(ms); i++ {
		if ms[i].Seq != ms[i-1].Seq+1 {
			t.Fatalf("seq %d after %d", ms[i].Seq, ms[i-1].Seq)
		}
		if ms[i-1].State == StateLeaving {
			t.Fatal("published after leaving")
		}
	}
	if len(ms) == 0 || ms[len(ms)-1].Seq != p.Seq() {
		t.Errorf("%d messages, Seq() %d", len(ms), p.Seq())
	}
}

func TestNewPublisherValidation(t *testing.T) {
	s := startServer(t, -1)
	nc := connect(t, s)
	tests := []struct {
		field string
		edit  func(*Config)
	}{
		{"ID", func(c *Config) { c.ID = "" }},
		{"ID", func(c *Config) { c.ID = "app.1" }},
		{"ID", func(c *Config) { c.ID = strings.Repeat("a", 65) }},
		{"URL", func(c *Config) { c.URL = "" }},
		{"URL", func(c *Config) { c.URL = "http://10.0.0.11:8080/app" }},
		{"URL", func(c *Config) { c.URL = "http://10.0.0.11" }},
		{"Prefix", func(c *Config) { c.Prefix = "cx..ha" }},
		{"Prefix", func(c *Config) { c.Prefix = "cx.*" }},
		{"Interval", func(c *Config) { c.Interval = 99 * time.Millisecond }},
		{"Interval", func(c *Config) { c.Interval = 60*time.Second + time.Millisecond }},
		{"Interval", func(c *Config) { c.Interval = -time.Second }},
		{"Version", func(c *Config) { c.Version = strings.Repeat("v", 65) }},
		{"Priority", func(c *Config) { c.Priority = 1001 }},
		{"LeaderRoles", func(c *Config) { c.LeaderRoles = roles(17, 2) }},
		{"LeaderRoles", func(c *Config) { c.LeaderRoles = []string{""} }},
		{"Meta", func(c *Config) { c.Meta = meta(17, 2, 2) }},
		{"Meta", func(c *Config) { c.Meta = meta(1, 2, 257) }},
		{"Meta", func(c *Config) { c.Meta = meta(16, 64, 256) }}, // payload over 4096 bytes
	}
	for _, tt := range tests {
		cfg := testConfig(0)
		tt.edit(&cfg)
		_, err := NewPublisher(nc, cfg)
		var e *ConfigError
		if !errors.As(err, &e) || e.Field != tt.field || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: got %v, want a ConfigError for %s", tt.field, err, tt.field)
		}
	}
	if _, err := NewPublisher(nil, testConfig(0)); err == nil {
		t.Error("NewPublisher with a nil connection succeeded")
	}

	cfg := testConfig(100*time.Millisecond + 500*time.Microsecond)
	cfg.Prefix = ""
	p, err := NewPublisher(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.subject != "cx.ha.hb.app1" || p.base.IntervalMS != 100 || p.interval != 100*time.Millisecond {
		t.Errorf("defaults: subject %q interval %v (%d ms)", p.subject, p.interval, p.base.IntervalMS)
	}
	if p, err = NewPublisher(nc, Config{ID: "a", URL: "http://h:1"}); err != nil || p.interval != DefaultInterval {
		t.Errorf("minimal config: %v", err)
	}
}

func TestConnectDefaults(t *testing.T) {
	s := startServer(t, -1)
	nc := connect(t, s)
	o := nc.Opts
	if o.ReconnectBufSize != -1 || o.MaxReconnect != -1 || !o.RetryOnFailedConnect ||
		o.ReconnectWait != 250*time.Millisecond || o.Name != DefaultConnName {
		t.Errorf("defaults: %+v", o)
	}
	nc2 := connect(t, s, nats.Name("mine"), nats.MaxReconnects(3))
	if nc2.Opts.Name != "mine" || nc2.Opts.MaxReconnect != 3 || nc2.Opts.ReconnectBufSize != -1 {
		t.Errorf("overrides not applied: %+v", nc2.Opts)
	}
}

// suppressed records the reasons of the heartbeats a paused Publisher
// suppressed, from its debug log: proof that a heartbeat was due and not
// published, with no need to wait and see.
type suppressed chan string

func (suppressed) Enabled(context.Context, slog.Level) bool { return true }
func (h suppressed) WithAttrs([]slog.Attr) slog.Handler     { return h }
func (h suppressed) WithGroup(string) slog.Handler          { return h }

func (h suppressed) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "heartbeat suppressed: paused" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "reason" {
			select {
			case h <- a.Value.String():
			default: // the test has seen enough
			}
			return false
		}
		return true
	})
	return nil
}

// await returns once a heartbeat was suppressed for each of reasons.
func (h suppressed) await(t *testing.T, reasons ...string) {
	t.Helper()
	deadline := time.After(wait)
	for len(reasons) > 0 {
		select {
		case r := <-h:
			if i := slices.Index(reasons, r); i >= 0 {
				reasons = slices.Delete(reasons, i, i+1)
			}
		case <-deadline:
			t.Fatalf("no heartbeat suppressed for %q", reasons)
		}
	}
}

// TestPublisherPause: while paused, periodic heartbeats, discover answers
// and changes of state or roles publish nothing and seq stays; Resume
// publishes the current state at once and the periodic timer runs again.
func TestPublisherPause(t *testing.T) {
	s := startServer(t, -1)
	h := make(suppressed, 1024)
	cfg := testConfig(100 * time.Millisecond)
	cfg.Logger = slog.New(h)
	p, l := newStarted(t, s, cfg)
	l.next(wait)
	l.next(wait) // a periodic one: the ticker runs

	p.Pause()
	p.Pause()
	if !p.Paused() {
		t.Fatal("not paused after Pause")
	}
	seq := p.Seq()
	if err := l.nc.Publish(DiscoverSubject(DefaultPrefix), nil); err != nil {
		t.Fatal(err)
	}
	if err := p.SetState(StateDraining); err != nil {
		t.Fatal(err)
	}
	p.SetLeaderRoles([]string{"reporting"})
	h.await(t, "interval", "interval", "discover", "state", "leader roles")
	if got := p.Seq(); got != seq {
		t.Errorf("seq %d while paused, want %d", got, seq)
	}
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, m := range l.rest() {
		if m.Seq > seq {
			t.Fatalf("published while paused: %+v", m)
		}
	}

	p.Resume()
	if p.Paused() || p.Seq() != seq+1 {
		t.Errorf("after Resume: paused %v, seq %d, want %d", p.Paused(), p.Seq(), seq+1)
	}
	m := l.next(wait)
	if m.Seq != seq+1 || !m.StartedAt.Equal(p.StartedAt()) || m.State != StateDraining ||
		!slices.Equal(m.LeaderRoles, []string{"reporting"}) {
		t.Fatalf("heartbeat of Resume: %+v, want seq %d, started_at %v, draining, roles [reporting]", m, seq+1, p.StartedAt())
	}
	if m := l.next(wait); m.Seq != seq+2 {
		t.Fatalf("periodic heartbeat after Resume: seq %d, want %d", m.Seq, seq+2)
	}
}

// TestPublisherResume: Resume publishes at once, once, as the same process.
func TestPublisherResume(t *testing.T) {
	s := startServer(t, -1)
	p, l := newStarted(t, s, testConfig(time.Minute))
	first := l.next(wait)
	p.Resume() // not paused: nothing to do
	p.Pause()
	p.Resume()
	p.Resume()
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ms := l.rest()
	if len(ms) != 1 || ms[0].Seq != 2 || !ms[0].StartedAt.Equal(first.StartedAt) || ms[0].State != StateReady {
		t.Fatalf("after Resume, Pause, Resume, Resume: %+v, want one heartbeat, seq 2, started_at %v", ms, first.StartedAt)
	}
	if p.Seq() != 2 {
		t.Errorf("Seq() %d, want 2", p.Seq())
	}
	if err := l.nc.Publish(DiscoverSubject(DefaultPrefix), nil); err != nil {
		t.Fatal(err)
	}
	if m := l.next(wait); m.Seq != 3 {
		t.Errorf("answer to discover after Resume: seq %d, want 3", m.Seq)
	}
}

// TestPublisherPauseBeforeStart: a Publisher paused before Start publishes
// its first heartbeat on Resume.
func TestPublisherPauseBeforeStart(t *testing.T) {
	s := startServer(t, -1)
	l := listen(t, s, HeartbeatSubject(DefaultPrefix, "app1"))
	p, err := NewPublisher(connect(t, s), testConfig(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	p.Pause()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if p.Seq() != 0 {
		t.Fatalf("seq %d after Start while paused", p.Seq())
	}
	p.Resume()
	if m := l.next(wait); m.Seq != 1 || !m.StartedAt.Equal(p.StartedAt()) {
		t.Fatalf("first heartbeat, on Resume: %+v", m)
	}
}

// TestPublisherLeavePaused: the process is going away, so Leave announces
// leaving even while paused; afterwards Pause and Resume do nothing.
func TestPublisherLeavePaused(t *testing.T) {
	s := startServer(t, -1)
	p, l := newStarted(t, s, testConfig(time.Minute))
	first := l.next(wait)
	p.Pause()
	if err := p.Leave(); err != nil {
		t.Fatal(err)
	}
	ms := l.rest()
	if len(ms) != 1 || ms[0].State != StateLeaving || ms[0].Seq != 2 || !ms[0].StartedAt.Equal(first.StartedAt) {
		t.Fatalf("Leave while paused: %+v, want one leaving message, seq 2", ms)
	}
	p.Resume()
	p.Pause()
	p.Resume()
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if ms := l.rest(); len(ms) != 0 || p.Seq() != 2 || p.Paused() {
		t.Errorf("Pause and Resume after Leave: %d messages, seq %d, paused %v", len(ms), p.Seq(), p.Paused())
	}
}

// TestPublisherStopPaused: Stop while paused stays silent, and Resume
// after it publishes nothing.
func TestPublisherStopPaused(t *testing.T) {
	s := startServer(t, -1)
	p, l := newStarted(t, s, testConfig(time.Minute))
	l.next(wait)
	p.Pause()
	p.Stop()
	p.Resume()
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if ms := l.rest(); len(ms) != 0 || p.Seq() != 1 {
		t.Errorf("Stop and Resume while paused: %d messages, seq %d", len(ms), p.Seq())
	}
}
