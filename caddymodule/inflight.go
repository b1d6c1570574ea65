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

// inflight tracks the tries waiting for response headers, per instance id
// (not address: several ids may share one), so that they can be cancelled
// when their instance goes silent.
//
// Each try needs its own cancellable context in any case: net/http's
// transport derives one from the request's context for every round trip,
// and a signal reaches it only through a registration with its parent. So
// the try's context (one context.WithCancelCause) is that registration,
// and what is kept per instance is the list of those contexts' cancel
// functions. The list is intrusive: its node lives in the request's state
// (proxyRequest.wait), so that tracking a try allocates nothing.
type inflight struct {
	mu      sync.Mutex
	waiting map[string]*waitNode // id -> first try waiting on it
}

// waitNode is one try waiting on an instance; a request has one at a time.
type waitNode struct {
	prev, next *waitNode
	id         string
	cancel     context.CancelCauseFunc
	linked     bool
}

// add lists w, a try waiting on instance id that cancel ends.
func (f *inflight) add(id string, w *waitNode, cancel context.CancelCauseFunc) {
	f.mu.Lock()
	if f.waiting == nil {
		f.waiting = map[string]*waitNode{}
	}
	head := f.waiting[id]
	*w = waitNode{next: head, id: id, cancel: cancel, linked: true}
	if head != nil {
		head.prev = w
	}
	f.waiting[id] = w
	f.mu.Unlock()
}

// remove unlists w, unless cancelAll took its list already.
func (f *inflight) remove(w *waitNode) {
	f.mu.Lock()
	if w.linked {
		if w.prev != nil {
			w.prev.next = w.next
		} else if w.next != nil {
			f.waiting[w.id] = w.next
		} else {
			delete(f.waiting, w.id)
		}
		if w.next != nil {
			w.next.prev = w.prev
		}
	}
	*w = waitNode{}
	f.mu.Unlock()
}

// cancelAll cancels every try waiting on instance id with cause.
func (f *inflight) cancelAll(id string, cause error) int {
	var cancels []context.CancelCauseFunc
	f.mu.Lock()
	for w := f.waiting[id]; w != nil; w = w.next {
		w.linked = false
		cancels = append(cancels, w.cancel)
	}
	delete(f.waiting, id)
	f.mu.Unlock()
	for _, cancel := range cancels {
		cancel(cause)
	}
	return len(cancels)
}

// count is the number of tries waiting on instance id.
func (f *inflight) count(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for w := f.waiting[id]; w != nil; w = w.next {
		n++
	}
	return n
}
