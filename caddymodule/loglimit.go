package caddymodule

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// logLimiter lets log lines through per key (a rejection reason, an event
// kind, a kind of NATS error) at a bounded rate, and counts the ones it
// holds back so that the next line can say how many: what arrives from
// the network must not be able to fill the log. Keys are a small fixed
// set, never publisher strings.
type logLimiter struct {
	limit rate.Limit
	burst int

	mu   sync.Mutex
	keys map[string]*keyLimit
}

type keyLimit struct {
	*rate.Limiter
	held int
}

// oncePer allows one line per key every period.
func oncePer(period time.Duration) *logLimiter {
	return &logLimiter{limit: rate.Every(period), burst: 1}
}

// burstThenRate allows burst lines per key at once, then perSecond.
func burstThenRate(burst int, perSecond float64) *logLimiter {
	return &logLimiter{limit: rate.Limit(perSecond), burst: burst}
}

// due reports whether a line of key may be logged at now, and how many
// lines of key were held back since the last one let through.
func (l *logLimiter) due(key string, now time.Time) (held int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = map[string]*keyLimit{}
	}
	k := l.keys[key]
	if k == nil {
		k = &keyLimit{Limiter: rate.NewLimiter(l.limit, l.burst)}
		l.keys[key] = k
	}
	if !k.AllowN(now, 1) {
		k.held++
		return 0, false
	}
	held, k.held = k.held, 0
	return held, true
}
