package demo

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/membership"
)

// watch follows membership as the gateway does (its own registry fed by
// the same heartbeats, choosing the routed version as the gateway's
// `versions consistent` does) and prints one line per change.
type watch struct {
	reg     *membership.Registry
	watcher *membership.Watcher
	nc      *nats.Conn

	mu  sync.Mutex
	out io.Writer
}

func startWatch(natsURL, prefix string, out io.Writer) (*watch, error) {
	w := &watch{out: out}
	reg, err := membership.New(membership.Config{Prefix: prefix, ConsistentVersions: true, OnEvent: w.print})
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(natsURL, nats.Name("caddy-cx demo membership log"))
	if err != nil {
		return nil, fmt.Errorf("demo: connecting to the embedded NATS server: %w", err)
	}
	w.reg, w.nc = reg, nc
	w.watcher = membership.NewWatcher(nc, reg)
	if err := w.watcher.Start(); err != nil {
		nc.Close()
		return nil, err
	}
	return w, nil
}

func (w *watch) print(ev membership.Event) {
	now := time.Now().Format("15:04:05.000")
	line := fmt.Sprintf("%s  %-9s %-5s %s", now, ev.Kind, ev.ID, ev.URL)
	switch ev.Kind {
	case membership.EventRejected:
		line += "  " + ev.Reason + ": " + ev.Detail
	case membership.EventVersionSwitch:
		line = fmt.Sprintf("%s  %s  %s", now, ev.Kind, ev.Detail)
	default:
		if v := w.version(ev); v != "" {
			line += "  version " + v
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintln(w.out, line)
}

// version is the version of the instance an event is about, if known.
// Events are reported outside the registry's lock: asking it is safe.
func (w *watch) version(ev membership.Event) string {
	for _, m := range w.reg.Members() {
		if m.ID == ev.ID && m.URL == ev.URL {
			return m.Version
		}
	}
	return ""
}

// printf writes one line to the log, between membership lines.
func (w *watch) printf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintf(w.out, format+"\n", args...)
}

// active reports whether id is routed with the given started_at.
func (w *watch) active(id string, startedAt time.Time) bool {
	for _, m := range w.reg.Members() {
		if m.ID == id {
			return m.State == membership.StateActive && m.StartedAt.Equal(startedAt)
		}
	}
	return false
}

func (w *watch) stop() {
	w.watcher.Stop()
	w.nc.Close()
}

// staleAfter is how long the gateway waits on a silent instance.
func staleAfter(interval time.Duration) time.Duration {
	return membership.StaleFactor * interval.Truncate(time.Millisecond)
}
