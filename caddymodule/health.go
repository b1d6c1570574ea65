package caddymodule

import (
	"sync"
	"sync/atomic"
	"time"
)

// DefaultFailTimeout is how long an instance that failed a request is
// passed over, as nginx's fail_timeout (with max_fails 1).
const DefaultFailTimeout = 10 * time.Second

// passiveHealth remembers which instances recently failed a request in a
// way that made the proxy try another one: what nginx counts (connection
// errors for any method; 502/503/504 and timeouts of idempotent
// requests). A POST's 503 is not retried, so it is not counted either.
// The policy marks an instance when asked for another one, from the
// outcome the transport recorded for the try (proxyRequest.judge). Marks
// are cleared when the instance restarts or returns from stale. Failures
// other gateways observed mark an instance too (mark), without being
// shared again.
type passiveHealth struct {
	timeout atomic.Int64 // fail_timeout (a time.Duration) of the config applied
	marked  atomic.Int64 // number of marks, to skip lookups when none
	until   sync.Map     // dial -> time.Time
	// gen changes with every mark set or cleared, so that the primary
	// need be derived again only when it moved (fleet.go).
	gen atomic.Uint64
	// onFail, when set, is told of each failure counted here, to share
	// it with the fleet (fleetState.queueFailure).
	onFail atomic.Pointer[func(dial string)]
}

// fail counts a failure of dial seen on the request path.
func (h *passiveHealth) fail(dial string, now time.Time) {
	h.mark(dial, now)
	if hook := h.onFail.Load(); hook != nil {
		(*hook)(dial)
	}
}

// mark passes dial over until fail_timeout from now.
func (h *passiveHealth) mark(dial string, now time.Time) {
	if _, existed := h.until.Swap(dial, now.Add(time.Duration(h.timeout.Load()))); !existed {
		h.marked.Add(1)
	}
	h.gen.Add(1)
}

// generation changes whenever a mark is set or cleared.
func (h *passiveHealth) generation() uint64 { return h.gen.Load() }

// failing reports whether dial failed within the timeout.
func (h *passiveHealth) failing(dial string, now time.Time) bool {
	if h == nil || h.marked.Load() == 0 {
		return false
	}
	until, ok := h.until.Load(dial)
	if !ok {
		return false
	}
	if now.Before(until.(time.Time)) {
		return true
	}
	h.clear(dial)
	return false
}

func (h *passiveHealth) clear(dial string) {
	if _, existed := h.until.LoadAndDelete(dial); existed {
		h.marked.Add(-1)
		h.gen.Add(1)
	}
}

// newPassiveHealth returns passive health with fail_timeout d.
func newPassiveHealth(d time.Duration) *passiveHealth {
	h := &passiveHealth{}
	h.timeout.Store(int64(d))
	return h
}
