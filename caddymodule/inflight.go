package caddymodule

import (
	"context"
	"errors"
	"sync"
)

// errInstanceStale cancels requests still waiting on an instance when it
// turns stale. It is deliberately not context.Canceled: the proxy treats
// that as the client going away and would not retry.
var errInstanceStale = errors.New("instance turned stale while the request waited for its response")

// inflight tracks the requests waiting for response headers, per instance
// id (not address: several ids may share one), so that they can be
// cancelled when their instance goes silent.
type inflight struct {
	mu      sync.Mutex
	waiting map[string]map[*waiter]struct{}
}

type waiter struct{ cancel context.CancelCauseFunc }

func (f *inflight) add(id string, cancel context.CancelCauseFunc) *waiter {
	w := &waiter{cancel: cancel}
	f.mu.Lock()
	if f.waiting == nil {
		f.waiting = map[string]map[*waiter]struct{}{}
	}
	set := f.waiting[id]
	if set == nil {
		set = map[*waiter]struct{}{}
		f.waiting[id] = set
	}
	set[w] = struct{}{}
	f.mu.Unlock()
	return w
}

func (f *inflight) remove(id string, w *waiter) {
	f.mu.Lock()
	if set := f.waiting[id]; set != nil {
		delete(set, w)
		if len(set) == 0 {
			delete(f.waiting, id)
		}
	}
	f.mu.Unlock()
}

// cancelAll cancels every request waiting on instance id with cause.
func (f *inflight) cancelAll(id string, cause error) int {
	f.mu.Lock()
	set := f.waiting[id]
	delete(f.waiting, id)
	f.mu.Unlock()
	for w := range set {
		w.cancel(cause)
	}
	return len(set)
}

// count is the number of requests waiting on instance id.
func (f *inflight) count(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiting[id])
}
