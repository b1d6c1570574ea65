package announce

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/redact"
)

// Run announces the application described by c until ctx is done or a
// stop signal (SIGTERM, SIGINT) arrives on signals; then it announces
// leaving and returns nil. DrainSignal (SIGUSR1) switches to draining,
// ReadySignal (SIGUSR2) back to ready. Heartbeats go out only while the
// health check passes. One heartbeat.Publisher, created when the check
// first passes, announces the application for the life of Run: when the
// check fails it is paused (the gateway takes the application out of
// routing once its heartbeats are stale), and when the check passes again
// it resumes with the same started_at and the next seq, so the gateway
// sees the same process become ready again, not a restart.
// Every line logged goes through log, redacted.
func Run(ctx context.Context, c *Config, signals <-chan os.Signal, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	// Every line is redacted: the NATS url's user info is a password or
	// a token, and nats.go's own redaction keeps a token in the clear.
	log = zap.New(redact.NewCore(log.Core())).With(zap.String("instance", c.ID))
	opts, err := c.Auth.Options()
	if err != nil {
		return err
	}
	nc, err := heartbeat.Connect(c.NATS, append(connHandlers(log), append(opts, nats.Name("caddy-cx announce "+c.ID))...)...)
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %s", redact.URL(c.NATS), redact.Known(err.Error(), c.NATS))
	}
	defer nc.Close()
	if !nc.IsConnected() {
		log.Warn("NATS unreachable; retrying in the background", zap.String("nats", redact.URL(c.NATS)), zap.Error(nc.LastError()))
	}

	s := &sidecar{cfg: c, nc: nc, log: log, state: heartbeat.StateReady}
	checks := make(chan error)
	watchCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { newChecker(c).watch(watchCtx, c.Interval, checks) })
	defer func() {
		cancel()
		wg.Wait()
	}()
	for {
		select {
		case err := <-checks:
			s.onHealth(err)
		case sig := <-signals:
			if s.onSignal(sig) {
				return s.leave(sig.String())
			}
		case <-ctx.Done():
			return s.leave("context done")
		}
	}
}

func connHandlers(log *zap.Logger) []nats.Option {
	return []nats.Option{
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("connected to NATS", zap.String("server", redact.URL(nc.ConnectedUrl())))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", zap.String("server", redact.URL(nc.ConnectedUrl())))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("lost NATS connection; heartbeats resume on reconnect", zap.Error(err))
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Error("NATS error (check the user's permissions on the heartbeat and discover subjects)", zap.Error(err))
		}),
	}
}

// sidecar is the state of one Run; only Run's goroutine touches it.
type sidecar struct {
	cfg   *Config
	nc    *nats.Conn
	log   *zap.Logger
	state heartbeat.State
	// pub is nil until the health check first passes, then announces the
	// application until Run returns, paused while the check fails.
	pub *heartbeat.Publisher
	// waiting is set once "not healthy yet" was logged, so that a long
	// outage logs one line, not one per check.
	waiting bool
}

func (s *sidecar) onHealth(err error) {
	switch {
	case err == nil && s.pub == nil:
		s.announce()
	case err == nil && s.pub.Paused():
		s.pub.Resume()
		s.waiting = false
		s.log.Info("healthy again: heartbeats resumed", zap.String("state", string(s.state)), zap.Int64("seq", s.pub.Seq()))
	case err != nil && s.pub != nil && !s.pub.Paused():
		s.pub.Pause()
		s.waiting = true
		s.log.Warn("health check failed: heartbeats paused; the gateway takes the instance out of routing when they go stale", zap.Error(err))
	case err != nil && !s.waiting:
		s.waiting = true
		s.log.Info("not healthy yet; heartbeats start once the health check passes", zap.Error(err))
	}
}

func (s *sidecar) announce() {
	pub, err := heartbeat.NewPublisher(s.nc, s.publisherConfig())
	if err == nil && s.state == heartbeat.StateDraining {
		err = pub.SetState(s.state)
	}
	if err == nil {
		err = pub.Start()
	}
	if err != nil {
		s.log.Error("cannot announce", zap.Error(err))
		return
	}
	s.pub, s.waiting = pub, false
	s.log.Info("healthy: announcing", zap.String("url", s.cfg.URL), zap.String("state", string(s.state)), zap.String("subject", heartbeat.HeartbeatSubject(s.cfg.Prefix, s.cfg.ID)))
}

func (s *sidecar) publisherConfig() heartbeat.Config {
	return heartbeat.Config{
		Prefix:   s.cfg.Prefix,
		ID:       s.cfg.ID,
		URL:      s.cfg.URL,
		Interval: s.cfg.Interval,
		Version:  s.cfg.Version,
		Priority: s.cfg.Priority,
		// the publisher logs with slog: into the same redacted zap core
		Logger: slog.New(zapslog.NewHandler(s.log.Core())),
	}
}

// onSignal handles sig and reports whether it asks to stop.
func (s *sidecar) onSignal(sig os.Signal) (stop bool) {
	var want heartbeat.State
	switch {
	case DrainSignal != nil && sig == DrainSignal:
		want = heartbeat.StateDraining
	case ReadySignal != nil && sig == ReadySignal:
		want = heartbeat.StateReady
	default:
		return true
	}
	s.state = want
	s.log.Info("state changed by signal", zap.String("signal", sig.String()), zap.String("state", string(want)))
	if s.pub != nil {
		if err := s.pub.SetState(want); err != nil {
			s.log.Warn("state not published", zap.Error(err))
		}
	}
	return false
}

// leave announces leaving once the application was announced, even while
// heartbeats are paused: the gateway then lists it as left at once instead
// of waiting for stale_after. A failure is logged, not returned: the
// gateway notices the silence anyway.
func (s *sidecar) leave(why string) error {
	if s.pub == nil {
		s.log.Info("stopping; nothing to leave (not announcing)", zap.String("reason", why))
		return nil
	}
	if err := s.pub.Leave(); err != nil {
		s.log.Warn("leaving not announced; the gateway notices when heartbeats go stale", zap.Error(err))
		return nil
	}
	s.log.Info("leaving announced", zap.String("reason", why))
	return nil
}
