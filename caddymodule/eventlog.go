package caddymodule

import (
	"fmt"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-cx/caddy-cx/membership"
)

// rejectLogEvery bounds how often rejections of one reason, and warnings
// of one kind, are logged; the ones in between are counted and reported
// with the next log line.
const rejectLogEvery = 5 * time.Second

// Lifecycle events (join, leave, restart, ...) are logged one line each
// during a deploy, but a publisher could make them endlessly (a new
// started_at on every message): each kind may log lifecycleBurst lines at
// once and lifecycleRefill more every second.
const (
	lifecycleBurst  = 200
	lifecycleRefill = 20
)

// eventLog logs membership changes, one line per change, and rejections
// and warnings rate-limited per reason or kind, so that what a publisher
// sends cannot fill the log.
type eventLog struct {
	logger *zap.Logger
	now    func() time.Time

	// warnings: one line per rejection reason or warning kind every
	// rejectLogEvery; lifecycle: a burst per kind, then a steady rate.
	warnings, lifecycle *logLimiter
}

func newEventLog(logger *zap.Logger) *eventLog {
	return &eventLog{logger: logger, now: time.Now,
		warnings: oncePer(rejectLogEvery), lifecycle: burstThenRate(lifecycleBurst, lifecycleRefill)}
}

func (l *eventLog) event(ev membership.Event) {
	// a role conflict among thousands of instances names them all
	ev.ID, ev.Detail = clip(ev.ID), clip(ev.Detail)
	fields := []zap.Field{zap.String("event", string(ev.Kind)), zap.String("instance", ev.ID), zap.String("url", ev.URL)}
	switch ev.Kind {
	case membership.EventRejected:
		l.rejected(ev)
	case membership.EventJoin, membership.EventLeave, membership.EventRestart, membership.EventDraining,
		membership.EventReady, membership.EventForget:
		if ev.Reason != "" {
			// dropped by a reload's new settings: say which rule
			fields = append(fields, zap.String("reason", ev.Reason), zap.String("detail", ev.Detail))
		}
		if n, ok := l.lifecycleDue(ev.Kind); ok {
			l.logger.Info("membership", append(fields, notLogged(n)...)...)
		}
	case membership.EventStale:
		if n, ok := l.lifecycleDue(ev.Kind); ok {
			l.logger.Warn("instance stale: heartbeats stopped", append(fields, notLogged(n)...)...)
		}
	case membership.EventVersionSwitch, membership.EventRoleResolved:
		if n, ok := l.lifecycleDue(ev.Kind); ok {
			l.logger.Info(string(ev.Kind), append([]zap.Field{zap.String("detail", ev.Detail)}, notLogged(n)...)...)
		}
	case membership.EventConflict:
		if n, ok := l.due("event:" + string(ev.Kind)); ok {
			l.logger.Warn("instance id conflict", append(fields, zap.String("detail", ev.Detail), zap.Int("similar_not_logged", n))...)
		}
	default:
		// flapping, role_conflict, alive_unheard, and any kind added
		// later: all are made by what publishers send.
		if n, ok := l.due("event:" + string(ev.Kind)); ok {
			l.logger.Warn(string(ev.Kind), append(fields, zap.String("detail", ev.Detail), zap.Int("similar_not_logged", n))...)
		}
	}
}

func (l *eventLog) rejected(ev membership.Event) {
	n, ok := l.due("reject:" + ev.Reason)
	if !ok {
		return
	}
	l.logger.Warn("heartbeat rejected",
		zap.String("reason", ev.Reason),
		zap.String("instance", ev.ID),
		zap.String("detail", ev.Detail),
		zap.Int("similar_rejections_not_logged", n))
}

// due reports whether a warning or rejection line of key may be logged
// now, and how many were not logged since the last one.
func (l *eventLog) due(key string) (int, bool) { return l.warnings.due(key, l.now()) }

// lifecycleDue does the same for a lifecycle event of kind.
func (l *eventLog) lifecycleDue(kind membership.EventKind) (int, bool) {
	return l.lifecycle.due(string(kind), l.now())
}

// maxLogField bounds a logged id list or detail.
const maxLogField = 1024

// clip cuts s to maxLogField bytes (on a rune boundary), saying so.
func clip(s string) string {
	if len(s) <= maxLogField {
		return s
	}
	cut := maxLogField
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("… (%d more bytes)", len(s)-cut)
}

// notLogged is the count of lines left out before this one, when any.
func notLogged(n int) []zap.Field {
	if n == 0 {
		return nil
	}
	return []zap.Field{zap.Int("similar_not_logged", n)}
}

// followingLogger makes loggers that write to the outputs of the logger
// last given to follow: a service (or NATS link) outlives the config that
// created it, and that config's log outputs close when it is unloaded.
type followingLogger struct {
	base *zap.Logger // name and options
	core atomic.Pointer[zapcore.Core]
}

func newFollowingLogger(l *zap.Logger) *followingLogger {
	f := &followingLogger{base: l}
	f.follow(l)
	return f
}

// follow sends what the loggers write to l's outputs from now on.
func (f *followingLogger) follow(l *zap.Logger) {
	c := l.Core()
	f.core.Store(&c)
}

// With returns a logger with fields that follows f.
func (f *followingLogger) With(fields ...zap.Field) *zap.Logger {
	return f.base.WithOptions(zap.WrapCore(func(zapcore.Core) zapcore.Core { return followingCore{f: f} })).With(fields...)
}

// followingCore is the zapcore.Core of f's loggers: each entry goes to
// the core f follows now, with the fields added since.
type followingCore struct {
	f      *followingLogger
	fields []zapcore.Field
}

func (c followingCore) current() zapcore.Core {
	core := *c.f.core.Load()
	if len(c.fields) > 0 {
		core = core.With(c.fields)
	}
	return core
}

func (c followingCore) Enabled(l zapcore.Level) bool { return (*c.f.core.Load()).Enabled(l) }

func (c followingCore) With(fields []zapcore.Field) zapcore.Core {
	return followingCore{f: c.f, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}

func (c followingCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return c.current().Check(e, ce)
}

func (c followingCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	return c.current().Write(e, fields)
}

func (c followingCore) Sync() error { return (*c.f.core.Load()).Sync() }
