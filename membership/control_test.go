package membership

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseControl(t *testing.T) {
	cases := []struct {
		name string
		data string
		ok   bool
		want Control
	}{
		{name: "drain", ok: true,
			data: `{"state":"drain","instance_started_at":"2026-11-25T20:00:00.123456789Z","by":"admin API","gateway":"gw1","at":"2026-11-25T21:00:00Z"}`,
			want: Control{State: ControlDrain, Process: p0, By: "admin API", Gateway: "gw1", At: t0}},
		{name: "maintenance without process", ok: true, data: `{"state":"maintenance","by":"me","gateway":"gw1","at":"2026-11-25T21:00:00Z"}`,
			want: Control{State: ControlMaintenance, By: "me", Gateway: "gw1", At: t0}},
		{name: "ready, state only", ok: true, data: `{"state":"ready"}`, want: Control{State: ControlReady}},
		{name: "white space around", ok: true, data: " \n{\"state\":\"ready\"}\n", want: Control{State: ControlReady}},

		{name: "state missing", data: `{"by":"x"}`},
		{name: "state unknown", data: `{"state":"maint"}`},
		{name: "state case", data: `{"state":"Drain"}`},
		{name: "state number", data: `{"state":1}`},
		{name: "state null", data: `{"state":null}`},
		{name: "unknown field", data: `{"state":"ready","extra":1}`},
		{name: "case variant key", data: `{"State":"drain"}`},
		{name: "case variant overriding", data: `{"state":"ready","STATE":"maintenance"}`},
		{name: "process not a time", data: `{"state":"drain","instance_started_at":"yesterday"}`},
		{name: "process number", data: `{"state":"drain","instance_started_at":5}`},
		{name: "at not a time", data: `{"state":"drain","at":"now"}`},
		{name: "by number", data: `{"state":"drain","by":1}`},
		{name: "process year 10000 in UTC", data: `{"state":"drain","instance_started_at":"9999-12-31T23:30:00-01:00"}`},
		{name: "at year 1999", data: `{"state":"drain","at":"1999-12-31T23:59:59Z"}`},
		{name: "at year 1", data: `{"state":"drain","at":"0001-01-01T00:00:01Z"}`},
		{name: "by too long", data: `{"state":"drain","by":"` + strings.Repeat("é", MaxControlByLen+1) + `"}`},
		{name: "gateway too long", data: `{"state":"drain","gateway":"` + strings.Repeat("g", MaxControlByLen+1) + `"}`},
		{name: "too large", data: `{"state":"ready","by":"` + strings.Repeat(" ", MaxControlSize) + `"}`},
		{name: "invalid UTF-8", data: "{\"state\":\"ready\",\"by\":\"\xff\"}"},
		{name: "trailing data", data: `{"state":"ready"}{"state":"maintenance"}`},
		{name: "trailing garbage", data: `{"state":"ready"} x`},
		{name: "array", data: `[{"state":"ready"}]`},
		{name: "null", data: `null`},
		{name: "empty", data: ``},
		{name: "a delete marker's empty value", data: "\x00"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseControl([]byte(c.data))
			if !c.ok {
				if err == nil {
					t.Fatalf("accepted as %+v", got)
				}
				if got != (Control{}) {
					t.Fatalf("refused, but returned %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.State != c.want.State || !got.Process.Equal(c.want.Process) || got.By != c.want.By ||
				got.Gateway != c.want.Gateway || !got.At.Equal(c.want.At) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			// Encode round-trips
			again, err := ParseControl(got.Encode())
			if err != nil || again.State != got.State || !again.Process.Equal(got.Process) {
				t.Fatalf("round trip of %s: %+v, %v", got.Encode(), again, err)
			}
		})
	}
}

func TestControlHolds(t *testing.T) {
	m := &Member{ID: "app1", StartedAt: p0}
	restarted := &Member{ID: "app1", StartedAt: p0.Add(time.Minute)}
	cases := []struct {
		c        Control
		holds    bool
		holdsNew bool
	}{
		{Control{}, false, false},
		{Control{State: ControlReady}, false, false},
		{Control{State: ControlDrain, Process: p0}, true, false},
		// the same instant in another zone is the same process
		{Control{State: ControlDrain, Process: p0.In(time.FixedZone("", 5*3600+1800))}, true, false},
		{Control{State: ControlDrain}, true, true},
		{Control{State: ControlMaintenance}, true, true},
		{Control{State: ControlMaintenance, Process: p0}, true, true},
		{Control{State: "bogus"}, false, false},
	}
	for _, c := range cases {
		if got := c.c.Holds(m); got != c.holds {
			t.Errorf("%+v holds the process %v, want %v", c.c, got, c.holds)
		}
		if got := c.c.Holds(restarted); got != c.holdsNew {
			t.Errorf("%+v holds a restarted process %v, want %v", c.c, got, c.holdsNew)
		}
	}
}

func drainOf(started time.Time) Control {
	return Control{State: ControlDrain, Process: started, By: "test", Gateway: "gw1", At: t0}
}

var maintenance = Control{State: ControlMaintenance, By: "test", Gateway: "gw1", At: t0}

// A drain takes the process out of the snapshot before SetControl
// returns, whatever RebuildEvery coalesces; ready brings it back; the
// drained instance's next process is routed again (a rolling deploy).
func TestSetControlDrain(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("app1", 1), at(0))
	r.Apply(beat("app2", 1), at(0))
	mustRouted(t, r, "app1", "app2")
	rec.take()

	gen := r.Snapshot().Generation
	r.SetControl("app1", drainOf(p0))
	if got := routedIDs(r.Snapshot()); len(got) != 1 || got[0] != "app2" {
		t.Fatalf("routed %v right after the drain", got)
	}
	if r.Snapshot().Generation == gen {
		t.Fatal("no new snapshot")
	}
	if m, ok := r.Member("app1"); !ok || m.Control.State != ControlDrain || m.State != StateActive {
		t.Fatalf("member %+v", m)
	}
	// its heartbeats keep it known and active, not routed
	r.Apply(beat("app1", 2), at(time.Second))
	mustRouted(t, r, "app2")
	// setting the same again rebuilds nothing
	gen = r.Snapshot().Generation
	r.SetControl("app1", drainOf(p0))
	if r.Snapshot().Generation != gen {
		t.Fatal("an unchanged control rebuilt the snapshot")
	}
	// ready brings it back at once
	r.SetControl("app1", Control{State: ControlReady})
	if got := routedIDs(r.Snapshot()); len(got) != 2 {
		t.Fatalf("routed %v after ready", got)
	}
	if len(r.Controls()) != 0 {
		t.Fatalf("controls %v after ready", r.Controls())
	}

	// drain, then the instance is replaced: the new process is routed
	r.SetControl("app1", drainOf(p0))
	mustRouted(t, r, "app2")
	r.Apply(beat("app1", 1, started(time.Minute)), at(2*time.Second))
	mustRouted(t, r, "app2", "app1") // ordered by started_at
	if m, _ := r.Member("app1"); m.Control.State != ControlDrain || m.Control.Holds(&m) {
		t.Fatalf("the drain entry should stay, holding nothing: %+v", m.Control)
	}
	if ev := rec.take(); len(ev) == 0 {
		t.Fatal("no events")
	}
}

func TestSetControlMaintenanceSurvivesRestarts(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("app1", 1), at(0))
	r.SetControl("app1", maintenance)
	mustRouted(t, r)
	r.Apply(beat("app1", 2, leaving()), at(time.Second))
	r.Apply(beat("app1", 1, started(time.Minute)), at(2*time.Second))
	r.Apply(beat("app1", 2, started(time.Minute)), at(3*time.Second))
	mustRouted(t, r)
	mustState(t, r, "app1", StateActive)
	r.SetControl("app1", Control{}) // the zero control clears as ready does
	mustRouted(t, r, "app1")
}

// An operator may put an id in maintenance before it ever announced
// itself: it joins held.
func TestSetControlBeforeJoin(t *testing.T) {
	r, _ := newReg(t, Config{})
	gen := r.Snapshot().Generation
	r.SetControl("app9", maintenance)
	if r.Snapshot().Generation != gen {
		t.Fatal("a control for an unknown id rebuilt the snapshot")
	}
	r.Apply(beat("app9", 1), at(0))
	r.Apply(beat("app1", 1), at(0))
	mustRouted(t, r, "app1")
	if m, _ := r.Member("app9"); m.Control.State != ControlMaintenance {
		t.Fatalf("joined with control %+v", m.Control)
	}
	// forgotten and back: the entry still applies
	r.SetControls(map[string]Control{"app9": maintenance, "app1": drainOf(p0), "app2": {State: ControlReady}})
	mustRouted(t, r)
	if c := r.Controls(); len(c) != 2 {
		t.Fatalf("ready kept as an entry: %v", c)
	}
}

func TestAwaitControls(t *testing.T) {
	r, _ := newReg(t, Config{AwaitControls: true})
	r.Apply(beat("app1", 1), at(0))
	r.Apply(beat("app2", 1), at(0))
	mustRouted(t, r)
	// a single entry does not release routing: the bucket is not read yet
	r.SetControl("app1", Control{State: ControlReady})
	r.SetControl("app2", maintenance)
	mustRouted(t, r)
	if got := len(r.Members()); got != 2 {
		t.Fatalf("%d members known while awaiting", got)
	}
	r.SetControls(map[string]Control{"app2": maintenance})
	mustRouted(t, r, "app1")
	// an empty bucket (or none) releases everything
	r2, _ := newReg(t, Config{AwaitControls: true})
	r2.Apply(beat("app1", 1), at(0))
	mustRouted(t, r2)
	r2.SetControls(nil)
	mustRouted(t, r2, "app1")
}

// SetControls replaces every entry: one no longer in the bucket is
// cleared.
func TestSetControlsReplaces(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("app1", 1), at(0))
	r.SetControl("app1", maintenance)
	mustRouted(t, r)
	r.SetControls(map[string]Control{"other": maintenance})
	mustRouted(t, r, "app1")
	if m, _ := r.Member("app1"); m.Control != (Control{}) {
		t.Fatalf("cleared entry still on the member: %+v", m.Control)
	}
}

func TestReconfigureKeepsControls(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("app1", 1), at(0))
	r.Apply(beat("app2", 1), at(0))
	r.SetControl("app1", maintenance)
	r.SetControl("app3", maintenance)
	if err := r.reconfigure(Config{Rise: 2}, at(time.Second)); err != nil {
		t.Fatal(err)
	}
	mustRouted(t, r, "app2")
	if len(r.Controls()) != 2 {
		t.Fatalf("controls %v after reconfigure", r.Controls())
	}
	// dropped by a reconfigure and back: the entry applies again
	if err := r.reconfigure(Config{AllowIDs: []string{"app2"}}, at(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := r.reconfigure(Config{}, at(time.Second)); err != nil {
		t.Fatal(err)
	}
	r.Apply(beat("app1", 2), at(2*time.Second))
	mustRouted(t, r, "app2")
}

// SetControl rebuilds at once while a coalesced rebuild is pending: the
// pending one still publishes when due, with everything applied since,
// and the state of the coalescing is not disturbed.
func TestSetControlWithPendingRebuild(t *testing.T) {
	r, _ := newReg(t, Config{RebuildEvery: 200 * time.Millisecond})
	r.Apply(beat("app1", 1), at(0))
	mustRouted(t, r, "app1")
	// make the next rebuild wait: the last one was "expensive" and just now
	r.mu.Lock()
	r.lastRebuild, r.lastRebuildCost = time.Now(), time.Hour
	r.mu.Unlock()
	r.Apply(beat("app2", 1), at(0))
	r.mu.Lock()
	pending := r.rebuildPending
	r.mu.Unlock()
	if !pending {
		t.Fatal("setup: no coalesced rebuild pending")
	}
	r.SetControl("app1", maintenance)
	// published at once, app2 included: rebuildNow reads every member
	if got := routedIDs(r.Snapshot()); len(got) != 1 || got[0] != "app2" {
		t.Fatalf("routed %v right after SetControl", got)
	}
	gen := r.Snapshot().Generation
	// the pending rebuild still fires and clears its state
	s := settled(t, r)
	if got := routedIDs(s); len(got) != 1 || got[0] != "app2" {
		t.Fatalf("routed %v after the pending rebuild", got)
	}
	deadline := time.Now().Add(2 * time.Second)
	for r.Snapshot().Generation == gen && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if r.Snapshot().Generation == gen {
		t.Fatal("the pending rebuild never published")
	}
	// coalescing still works afterwards
	r.SetControl("app1", Control{State: ControlReady})
	mustRouted(t, r, "app1", "app2")
}

func TestSetControlAfterClose(t *testing.T) {
	r, rec := newReg(t, Config{RebuildEvery: time.Hour})
	r.Apply(beat("app1", 1), at(0))
	r.Close()
	rec.take()
	r.SetControl("app1", maintenance)
	r.SetControls(map[string]Control{})
	if ev := rec.take(); len(ev) != 0 {
		t.Fatalf("events after Close: %+v", ev)
	}
	if got := routedIDs(r.Snapshot()); len(got) != 1 {
		t.Fatalf("routed %v", got)
	}
}

func FuzzParseControl(f *testing.F) {
	f.Add([]byte(`{"state":"drain","instance_started_at":"2026-11-25T20:00:00.123456789Z","by":"admin API","gateway":"gw1","at":"2026-11-25T21:00:00Z"}`))
	f.Add([]byte(`{"state":"maintenance","State":"ready"}`))
	f.Add([]byte(`{"state":"ready","at":"2026-11-25T21:00:00+05:30","instance_started_at":null}`))
	f.Add([]byte(`{"state":"drain","instance_started_at":"9999-12-31T23:59:59-01:00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseControl(data)
		if err != nil {
			if c != (Control{}) {
				t.Fatalf("refused with %+v", c)
			}
			return
		}
		switch c.State {
		case ControlReady, ControlDrain, ControlMaintenance:
		default:
			t.Fatalf("state %q", c.State)
		}
		enc := c.Encode()
		if enc == nil {
			t.Fatalf("an accepted entry does not encode: %+v", c)
		}
		again, err := ParseControl(enc)
		if len(enc) > MaxControlSize {
			return
		}
		if err != nil {
			t.Fatalf("ParseControl(Encode) %s: %v", enc, err)
		}
		if again.State != c.State || !again.Process.Equal(c.Process) || !again.At.Equal(c.At) ||
			again.By != c.By || again.Gateway != c.Gateway {
			t.Fatalf("round trip %+v to %+v", c, again)
		}
	})
}

// The control bucket's keys in docs/PROTOCOL.md are the ones ParseControl
// takes, and Control encodes.
func TestProtocolDocControlKeys(t *testing.T) {
	doc, err := os.ReadFile("../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n### The control bucket\n")
	if !ok {
		t.Fatal(`docs/PROTOCOL.md has no "### The control bucket"`)
	}
	section, _, _ = strings.Cut(section, "\n#")
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\| ")
	var documented []string
	for _, line := range strings.Split(section, "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			documented = append(documented, m[1])
		}
	}
	var tags []string
	typ := reflect.TypeFor[Control]()
	for i := range typ.NumField() {
		tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		tags = append(tags, tag)
	}
	if !slices.Equal(documented, tags) {
		t.Fatalf("keys in docs/PROTOCOL.md %v, Control's %v", documented, tags)
	}
	for _, k := range tags {
		if !controlFields[k] {
			t.Fatalf("ParseControl refuses Control's key %s", k)
		}
	}
	if len(controlFields) != len(tags) {
		t.Fatalf("ParseControl takes %d keys, Control has %d", len(controlFields), len(tags))
	}
	for _, s := range []string{"`cx_control`", "`<prefix>.<id>`", fmt.Sprintf("%d bytes", MaxControlSize), fmt.Sprintf("up to %d characters", MaxControlByLen)} {
		if !strings.Contains(section, s) {
			t.Errorf("the control bucket section does not say %s", s)
		}
	}
}

// An instance released from maintenance or a drain comes back into
// routing now: its ActiveSince (slow start, failback delay) is the
// release, not when it was first routed, in the snapshot published at
// once and afterwards.
func TestControlReleaseRestartsActiveSince(t *testing.T) {
	r, _ := newReg(t, Config{})
	r.Apply(beat("app1", 1), at(0))
	r.setControl("app1", maintenance, at(time.Second))
	for i := range 5 {
		r.Apply(beat("app1", int64(2+i)), at(time.Duration(2+i)*time.Second))
	}
	r.setControl("app1", Control{State: ControlReady}, at(10*time.Second))
	s := r.Snapshot()
	if len(s.Routes) != 1 || !s.Routes[0].ActiveSince.Equal(at(10*time.Second)) {
		t.Fatalf("routes %+v after ready at %v", s.Routes, at(10*time.Second))
	}
	r.Apply(beat("app1", 7), at(11*time.Second))
	if m, _ := r.Member("app1"); !m.ActiveSince.Equal(at(10 * time.Second)) {
		t.Fatalf("ActiveSince %v after the next heartbeat", m.ActiveSince)
	}
	// the same through SetControls
	r.setControls(map[string]Control{"app1": drainOf(p0)}, at(12*time.Second))
	mustRouted(t, r)
	r.setControls(nil, at(13*time.Second))
	if s := r.Snapshot(); len(s.Routes) != 1 || !s.Routes[0].ActiveSince.Equal(at(13*time.Second)) {
		t.Fatalf("routes %+v after SetControls at %v", s.Routes, at(13*time.Second))
	}
}
