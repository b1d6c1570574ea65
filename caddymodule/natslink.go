package caddymodule

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/internal/redact"
)

// linkPool holds the NATS connections, keyed by their configuration, so
// that a config reload with the same `cx` options keeps the connection.
var linkPool = caddy.NewUsagePool()

// natsLink is one shared NATS connection. It connects on first start and
// keeps reconnecting forever; loss and return are logged once each.
type natsLink struct {
	urls    string
	options func(*natsLink) ([]nats.Option, error)
	logger  *zap.Logger
	// logs makes logger write to the log of the config started last.
	logs *followingLogger

	once    sync.Once
	err     error
	nc      *nats.Conn
	up      atomic.Bool
	everUp  atomic.Bool
	closing atomic.Bool

	// errLogs bounds how often each kind of asynchronous error is logged.
	errLogs *logLimiter
	// reconnects counts the returns of a lost connection (a metric).
	reconnects atomic.Uint64
}

func acquireLink(key string, urls []string, options func(*natsLink) ([]nats.Option, error), logger *zap.Logger) (*natsLink, error) {
	val, _, err := linkPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		logs := newFollowingLogger(logger)
		return &natsLink{urls: strings.Join(urls, ","), options: options, logger: logs.With(), logs: logs,
			errLogs: oncePer(errorLogEvery)}, nil
	})
	if err != nil {
		return nil, err
	}
	return val.(*natsLink), nil
}

// start connects, once. NATS being unreachable is not an error: the
// connection keeps trying in the background and the gateway serves what
// it learns once connected.
func (l *natsLink) start() error {
	l.once.Do(func() {
		opts, err := l.options(l)
		if err != nil {
			l.err = err
			return
		}
		nc, err := nats.Connect(l.urls, opts...)
		if err != nil {
			l.err = fmt.Errorf("cx: connecting to NATS at %s: %s", redact.URL(l.urls), redact.Known(err.Error(), l.urls))
			return
		}
		l.nc = nc
		if nc.IsConnected() {
			l.markUp(nc)
		} else {
			l.logger.Warn("cannot connect to NATS at start; routing starts once it connects, retrying in the background",
				zap.String("servers", redact.URL(l.urls)), zap.String("problem", natsProblem(nc.LastError())), l.errField(nc.LastError()))
		}
	})
	return l.err
}

func (l *natsLink) conn() *nats.Conn { return l.nc }

func (l *natsLink) connected() bool { return l.up.Load() }

func (l *natsLink) markUp(nc *nats.Conn) {
	if l.up.Swap(true) {
		return
	}
	verb := "connected to NATS"
	if l.everUp.Swap(true) {
		verb = "reconnected to NATS"
		l.reconnects.Add(1)
	}
	// not nc.ConnectedUrlRedacted: it keeps a token (nats://token@host).
	l.logger.Info(verb, zap.String("server", redact.URL(nc.ConnectedUrl())))
}

func (l *natsLink) markDown(err error) {
	if !l.up.Swap(false) || l.closing.Load() {
		return
	}
	l.logger.Warn("lost NATS connection; routing continues on the last known members",
		zap.String("problem", natsProblem(err)), l.errField(err))
}

// errField is zap.Error with the text redacted: an error may repeat a
// server's url, user info and all.
func (l *natsLink) errField(err error) zap.Field {
	if err == nil {
		return zap.Skip()
	}
	return zap.String("error", redact.Known(err.Error(), l.urls))
}

// errorLogEvery bounds how often one kind of asynchronous NATS error (an
// authentication failure on every reconnect attempt, say) is logged.
const errorLogEvery = 30 * time.Second

// handlers are the connection callbacks, as in nats.go's examples.
func (l *natsLink) handlers() []nats.Option {
	return []nats.Option{
		nats.ConnectHandler(l.markUp),
		nats.ReconnectHandler(l.markUp),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { l.markDown(err) }),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if !l.closing.Load() {
				l.logger.Error("NATS connection closed", l.errField(nc.LastError()))
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if _, ok := l.errLogs.due(natsProblem(err), time.Now()); !ok {
				return
			}
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			l.logger.Warn("NATS error", zap.String("subject", subject), zap.String("problem", natsProblem(err)), l.errField(err))
		}),
	}
}

// Destruct closes the connection when no config uses it any more.
func (l *natsLink) Destruct() error {
	l.closing.Store(true)
	if l.nc != nil {
		l.nc.Close()
	}
	return nil
}

// options builds the nats.go options of the app's configuration; l's
// handlers log the connection's life.
func (a *App) options(l *natsLink) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name("caddy-cx gateway"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// Credentials may be fixed on the server side while we retry:
		// keep retrying after authentication errors too.
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.Timeout(2 * time.Second),
		// A silent partition is noticed within about 2s, before members
		// would turn stale for a silence that proves nothing.
		nats.PingInterval(time.Second),
		nats.MaxPingsOutstanding(2),
		// A discover queued while disconnected is stale by the time it
		// would be sent; the watcher sends a fresh one on reconnect.
		nats.ReconnectBufSize(-1),
	}
	opts = append(opts, l.handlers()...)
	auth, err := a.auth.Options()
	if err != nil {
		return nil, fmt.Errorf("cx: %w", err)
	}
	return append(opts, auth...), nil
}
