package caddymodule

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/membership"
)

// rejectLogEvery bounds how often rejections of one reason are logged; the
// ones in between are counted and reported with the next log line.
const rejectLogEvery = 5 * time.Second

// eventLog logs membership changes, one line per change, and rejections
// rate-limited per reason so that a flood cannot fill the log.
type eventLog struct {
	logger *zap.Logger

	mu         sync.Mutex
	lastReject map[string]time.Time
	suppressed map[string]int
}

func newEventLog(logger *zap.Logger) *eventLog {
	return &eventLog{logger: logger, lastReject: map[string]time.Time{}, suppressed: map[string]int{}}
}

func (l *eventLog) event(ev membership.Event) {
	fields := []zap.Field{zap.String("event", string(ev.Kind)), zap.String("instance", ev.ID), zap.String("url", ev.URL)}
	switch ev.Kind {
	case membership.EventRejected:
		l.rejected(ev)
	case membership.EventFlapping, membership.EventRoleConflict, membership.EventAliveUnheard:
		l.logger.Warn(string(ev.Kind), append(fields, zap.String("detail", ev.Detail))...)
	case membership.EventVersionSwitch, membership.EventRoleResolved:
		l.logger.Info(string(ev.Kind), zap.String("detail", ev.Detail))
	case membership.EventConflict:
		l.logger.Warn("instance id conflict", append(fields, zap.String("detail", ev.Detail))...)
	case membership.EventStale:
		l.logger.Warn("instance stale: heartbeats stopped", fields...)
	default:
		l.logger.Info("membership", fields...)
	}
}

func (l *eventLog) rejected(ev membership.Event) {
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.lastReject[ev.Reason]) < rejectLogEvery {
		l.suppressed[ev.Reason]++
		l.mu.Unlock()
		return
	}
	l.lastReject[ev.Reason] = now
	suppressed := l.suppressed[ev.Reason]
	l.suppressed[ev.Reason] = 0
	l.mu.Unlock()
	l.logger.Warn("heartbeat rejected",
		zap.String("reason", ev.Reason),
		zap.String("instance", ev.ID),
		zap.String("detail", ev.Detail),
		zap.Int("similar_rejections_not_logged", suppressed))
}
