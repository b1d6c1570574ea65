package caddymodule

import (
	"context"
	"errors"
	"testing"
)

// TestInflightListsPerInstance: tries are listed per instance id, leave
// the list in any order, and a stale instance's tries are all cancelled
// with errInstanceStale (not context.Canceled, which the proxy would not
// retry), others untouched.
func TestInflightListsPerInstance(t *testing.T) {
	var f inflight
	nodes := make([]waitNode, 4)
	ctxs := make([]context.Context, 4)
	for i, id := range []string{"a", "a", "a", "b"} {
		ctx, cancel := context.WithCancelCause(context.Background())
		ctxs[i] = ctx
		f.add(id, &nodes[i], cancel)
	}
	if f.count("a") != 3 || f.count("b") != 1 {
		t.Fatalf("counts a=%d b=%d, want 3 and 1", f.count("a"), f.count("b"))
	}
	f.remove(&nodes[1]) // from the middle
	if f.count("a") != 2 {
		t.Fatalf("after a removal a=%d, want 2", f.count("a"))
	}
	if n := f.cancelAll("a", errInstanceStale); n != 2 {
		t.Fatalf("cancelAll cancelled %d, want 2", n)
	}
	for i, want := range []bool{true, false, true, false} {
		cancelled := errors.Is(context.Cause(ctxs[i]), errInstanceStale)
		if cancelled != want {
			t.Errorf("try %d cancelled %v, want %v", i, cancelled, want)
		}
	}
	if ctxs[0].Err() == context.Canceled && errors.Is(context.Cause(ctxs[0]), context.Canceled) {
		t.Error("the cause must not be context.Canceled")
	}
	f.remove(&nodes[0]) // a try ending after its instance went stale
	f.remove(&nodes[2])
	if f.count("a") != 0 || f.count("b") != 1 {
		t.Fatalf("after stale a=%d b=%d, want 0 and 1", f.count("a"), f.count("b"))
	}
	f.remove(&nodes[3])
	if len(f.waiting) != 0 {
		t.Fatalf("%d ids left listed with no try waiting", len(f.waiting))
	}
	allocs := testing.AllocsPerRun(100, func() {
		f.add("a", &nodes[0], nil)
		f.remove(&nodes[0])
	})
	if allocs != 0 {
		t.Fatalf("tracking a try allocates %v times, want 0", allocs)
	}
}
