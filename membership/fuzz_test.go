package membership

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// FuzzRegistry reads the input as a program of operations on a registry
// and checks its invariants after every one.
func FuzzRegistry(f *testing.F) {
	// ops: 0-5 heartbeat, 6 sweep, 7 freeze, 8 thaw, 9 garbage, 10 encoded
	// heartbeat through Observe. Arguments follow the op byte.
	const (
		a, b, c, d, e           = 0, 1, 2, 3, 4
		rdy, drn, lv            = 0, 1, 2
		in, in2, in6, out, name = 0, 1, 2, 3, 4
	)
	hb := func(id, seq, start, state, prio, url int) []byte {
		return []byte{0, byte(id), byte(seq - 1), byte(start), byte(state), byte(prio), byte(url), 1}
	}
	sweep := func(tenths int) []byte { return []byte{6, byte(tenths)} }
	freeze, thaw := []byte{7}, []byte{8}
	prog := func(ops ...[]byte) []byte { return slices.Concat(ops...) }

	f.Add([]byte{})
	f.Add(prog(hb(a, 1, 0, rdy, 0, in), sweep(20), sweep(10), hb(a, 2, 0, rdy, 0, in)))
	// states, seq, leaving is final, restart after left
	f.Add(prog(hb(a, 1, 0, rdy, 0, in), hb(a, 2, 0, drn, 0, in), hb(a, 3, 0, rdy, 0, in), hb(a, 3, 0, drn, 0, in),
		hb(a, 2, 0, lv, 0, in), hb(a, 4, 0, lv, 0, in), hb(a, 5, 0, rdy, 0, in), hb(a, 1, 1, rdy, 0, in2)))
	// id conflict: two processes alternating
	f.Add(prog(hb(b, 1, 1, rdy, 0, in), hb(b, 1, 2, rdy, 0, in2), hb(b, 2, 1, rdy, 0, in), hb(b, 2, 2, rdy, 0, in2),
		hb(b, 3, 1, drn, 0, in), hb(b, 3, 2, drn, 0, in2), hb(b, 4, 2, rdy, 0, in2)))
	// freeze, long silence, thaw
	f.Add(prog(hb(a, 1, 0, rdy, 0, in), hb(c, 1, 0, drn, 0, in6), freeze, sweep(255), sweep(255), thaw,
		sweep(20), hb(a, 2, 0, rdy, 0, in), sweep(20), sweep(20)))
	// capacity and eviction, priorities and the override of e
	f.Add(prog(hb(a, 1, 0, rdy, 3, in), hb(b, 1, 0, rdy, 2, in), hb(c, 1, 0, rdy, 1, in), hb(d, 1, 0, rdy, 0, in),
		hb(a, 2, 0, lv, 0, in), hb(d, 1, 0, rdy, 0, in), sweep(40), hb(e, 1, 0, rdy, 4, in), sweep(255), hb(d, 2, 0, rdy, 0, in)))
	// networks
	f.Add(prog(hb(a, 1, 0, rdy, 0, out), hb(a, 1, 0, rdy, 0, name), hb(a, 1, 0, rdy, 0, in6), hb(a, 2, 0, rdy, 0, out)))
	// stale, back, forgotten
	f.Add(prog(hb(a, 1, 0, rdy, 0, in), sweep(30), hb(a, 1, 0, rdy, 0, in), hb(a, 2, 0, rdy, 0, in), sweep(30),
		sweep(255), hb(a, 3, 0, rdy, 0, in)))
	// through Observe: garbage, encoded with offsets
	f.Add(prog([]byte{9, 0, 5, '{', '"', 'a', '"', '}'}, []byte{10, a, in, rdy, 0, 1, 2, 0}, []byte{10, a, in, rdy, 0, 1, 3, 1},
		[]byte{10, a, in, drn, 0, 1, 4, 2}, []byte{10, a, in, 3, 0, 0, 5, 0}, []byte{9, 2, 0}))
	f.Fuzz(func(t *testing.T, program []byte) {
		runProgram(t, program)
	})
}

var (
	fuzzNets = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	fuzzIDs  = []string{"a", "b", "c", "d", "e"}
	fuzzURLs = []string{
		"http://10.0.0.1:8080",
		"http://10.0.0.2:8080/",
		"https://[::ffff:10.0.0.3]:443",
		"http://192.168.0.1:80",  // outside
		"http://app.internal:80", // a name
		"http://[fd00::1]:8080",
	}
	fuzzPriorities = []int{0, 0, -1, 1, 5, heartbeat.MinPriority, heartbeat.MaxPriority}
	fuzzSeqs       = []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1 << 50, heartbeat.MaxSeq}
	fuzzStarts     = []mod{started(0), started(time.Second), started(2 * time.Second), started(3 * time.Second),
		withStart(t0.Add(time.Hour)), withStart(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC))}
	fuzzOffsets  = []string{"Z", "+05:30", "-07:00"}
	fuzzSubjects = []string{"cx.ha.hb.a", "cx.ha.hb.b", "cx.ha.hb.", "cx.ha.hb.a.b", "cx.ha.hb.*", "other.hb.a", ""}
)

type fuzzState struct {
	t       *testing.T
	r       *Registry
	now     time.Time
	frozen  bool
	thawed  time.Time
	gen     uint64
	maxInst int
	// left records, per id, the started_at (UnixNano) values of processes
	// that left: leaving is final for that started_at while the member is
	// listed.
	left map[string]map[int64]bool
	// process records, per listed id, the started_at (UnixNano) and url of
	// its member: within one process the url never changes.
	process map[string]fuzzProcess
}

type fuzzProcess struct {
	started int64
	url     string
}

// fuzzRange is the fuzzed registry's priority_range.
var fuzzRange = PriorityRange{Min: -2, Max: 4}

func runProgram(t *testing.T, program []byte) {
	st := &fuzzState{t: t, now: t0, maxInst: 3, left: map[string]map[int64]bool{}, process: map[string]fuzzProcess{}}
	r, err := New(Config{
		MaxInstances:  st.maxInst,
		AllowNetworks: fuzzNets,
		AllowIDs:      []string{"[a-e]"},
		PriorityRange: &fuzzRange,
		Priority:      map[string]int{"e": -3},
		ForgetAfter:   20 * time.Second,
		OnEvent: func(ev Event) {
			if ev.Kind == EventForget {
				delete(st.left, ev.ID)
				delete(st.process, ev.ID)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	st.r = r
	arg := func() int {
		if len(program) == 0 {
			return 0
		}
		b := program[0]
		program = program[1:]
		return int(b)
	}
	for step := 0; len(program) > 0 && step < 2000; step++ {
		var desc string
		switch op := arg() % 11; {
		case op <= 5:
			m := beat(fuzzIDs[arg()%len(fuzzIDs)], fuzzSeqs[arg()%len(fuzzSeqs)],
				fuzzStarts[arg()%len(fuzzStarts)],
				withState([]heartbeat.State{heartbeat.StateReady, heartbeat.StateDraining, heartbeat.StateLeaving}[arg()%3]),
				withPriority(fuzzPriorities[arg()%len(fuzzPriorities)]),
				withURL(fuzzURLs[arg()%len(fuzzURLs)]),
				withInterval([]int{100, 1000, 5000}[arg()%3]))
			desc = fmt.Sprintf("apply %+v", *m)
			r.Apply(m, st.now)
		case op == 6:
			st.now = st.now.Add(time.Duration(arg()) * 100 * time.Millisecond)
			desc = "sweep at " + st.now.Sub(t0).String()
			r.Sweep(st.now)
		case op == 7:
			desc = "freeze"
			r.Freeze()
			st.frozen = true
		case op == 8:
			desc = "thaw"
			if st.frozen {
				st.thawed = st.now
			}
			r.Thaw(st.now)
			st.frozen = false
		case op == 9:
			subject := fuzzSubjects[arg()%len(fuzzSubjects)]
			n := min(arg(), len(program))
			data := program[:n]
			program = program[n:]
			desc = fmt.Sprintf("observe %q %q", subject, data)
			before := r.Members()
			snap := r.Snapshot()
			if err := r.Observe(subject, data, st.now); err != nil {
				if !membersEqual(r.Members(), before) || r.Snapshot() != snap {
					t.Fatalf("%s: rejected message (%v) changed membership", desc, err)
				}
			}
		case op == 10:
			id := fuzzIDs[arg()%len(fuzzIDs)]
			payload := fmt.Sprintf(`{"proto":1,"id":%q,"url":%q,"state":%q,"started_at":"2026-11-25T20:00:0%d.5%s","seq":%d,"interval_ms":1000,"priority":%d}`,
				id, fuzzURLs[arg()%len(fuzzURLs)], []string{"ready", "draining", "leaving", "bogus"}[arg()%4],
				arg()%4, fuzzOffsets[arg()%len(fuzzOffsets)], arg()%12, fuzzPriorities[arg()%len(fuzzPriorities)])
			desc = "observe " + payload
			_ = r.Observe("cx.ha.hb."+id, []byte(payload), st.now)
		}
		st.check(desc)
	}
}

func (st *fuzzState) check(desc string) {
	t, r := st.t, st.r
	if got := r.Frozen(); got != st.frozen {
		t.Fatalf("after %s: Frozen %v, want %v", desc, got, st.frozen)
	}
	members := r.Members()
	if len(members) > st.maxInst {
		t.Fatalf("after %s: %d members, more than %d", desc, len(members), st.maxInst)
	}
	byID := map[string]Member{}
	for i, m := range members {
		byID[m.ID] = m
		if i > 0 && !less(&members[i-1], &m) {
			t.Fatalf("after %s: members not ordered at %d: %+v, %+v", desc, i, members[i-1], m)
		}
		switch m.State {
		case StateActive, StateDraining:
			from := m.LastSeen
			if st.thawed.After(from) {
				from = st.thawed
			}
			// The clock moves only with sweeps, so a live member must be
			// younger than stale_after unless the registry is frozen.
			if !st.frozen && st.now.Sub(from) >= m.StaleAfter {
				t.Fatalf("after %s: %s is %s though silent for %v", desc, m.ID, m.State, st.now.Sub(from))
			}
		case StateStale, StateLeft:
		default:
			t.Fatalf("after %s: %s has state %q", desc, m.ID, m.State)
		}
		if st.left[m.ID][m.StartedAt.UnixNano()] && m.State != StateLeft {
			t.Fatalf("after %s: %s is %s though its process (started %v) left", desc, m.ID, m.State, m.StartedAt)
		}
		if m.State == StateLeft {
			if st.left[m.ID] == nil {
				st.left[m.ID] = map[int64]bool{}
			}
			st.left[m.ID][m.StartedAt.UnixNano()] = true
		}
		if want, ok := map[string]int{"e": -3}[m.ID]; ok && m.Priority != want {
			t.Fatalf("after %s: %s priority %d, want override %d", desc, m.ID, m.Priority, want)
		} else if !ok && (m.Priority < fuzzRange.Min || m.Priority > fuzzRange.Max) {
			t.Fatalf("after %s: %s priority %d outside priority_range", desc, m.ID, m.Priority)
		}
		if m.StartedAt.After(st.now.Add(DefaultClockSkew)) || m.StartedAt.UTC().Year() > maxStartYear {
			t.Fatalf("after %s: %s started at %v, ahead of the clock %v", desc, m.ID, m.StartedAt, st.now)
		}
		if p, ok := st.process[m.ID]; ok && p.started == m.StartedAt.UnixNano() && !sameEndpoint(p.url, m.URL) {
			t.Fatalf("after %s: %s moved from %s to %s within one process", desc, m.ID, p.url, m.URL)
		}
		st.process[m.ID] = fuzzProcess{m.StartedAt.UnixNano(), m.URL}
		// IP literals only inside allow_networks; DNS names are checked
		// when dialing.
		if ip, ok := heartbeat.IPHost(m.URL); ok && !(fuzzNets[0].Contains(ip.Unmap()) || fuzzNets[1].Contains(ip)) {
			t.Fatalf("after %s: %s has url %s outside allow_networks", desc, m.ID, m.URL)
		}
	}

	s := r.Snapshot()
	if s.Generation < st.gen {
		t.Fatalf("after %s: generation went back from %d to %d", desc, st.gen, s.Generation)
	}
	st.gen = s.Generation
	// Every route is an active member, as the registry knows it.
	var want []Route
	for _, m := range members {
		if m.State == StateActive {
			want = append(want, Route{ID: m.ID, Dial: m.Dial, Priority: m.Priority, Version: m.Version, ActiveSince: m.ActiveSince})
		}
	}
	for i, rt := range s.Routes {
		m, ok := byID[rt.ID]
		if !ok || m.State != StateActive {
			t.Fatalf("after %s: route %+v is not an active member (%+v)", desc, rt, m)
		}
		if i > 0 {
			prev := byID[s.Routes[i-1].ID]
			if !less(&prev, &m) {
				t.Fatalf("after %s: routes not ordered at %d: %v", desc, i, routedIDs(s))
			}
		}
	}
	// And the snapshot is not out of date: every active member is routed.
	if !slices.Equal(s.Routes, want) {
		t.Fatalf("after %s: routes %+v, want %+v", desc, s.Routes, want)
	}
	// Tiers: end indices of runs of equal priority.
	var tiers []int
	for i := range s.Routes {
		if i == len(s.Routes)-1 || s.Routes[i+1].Priority != s.Routes[i].Priority {
			tiers = append(tiers, i+1)
		}
	}
	if !slices.Equal(s.Tiers, tiers) {
		t.Fatalf("after %s: tiers %v, want %v (routes %+v)", desc, s.Tiers, tiers, s.Routes)
	}
	for i := range s.Tiers {
		tier := s.Tier(i)
		if len(tier) == 0 {
			t.Fatalf("after %s: tier %d is empty", desc, i)
		}
		for _, rt := range tier {
			if rt.Priority != tier[0].Priority {
				t.Fatalf("after %s: tier %d mixes priorities: %+v", desc, i, tier)
			}
		}
	}
}
