package membership

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// The attacks of a hostile publisher on NATS, each against a victim "a"
// that announced itself at t0 and keeps beating once a second.

// victim is the url the real instance announced.
const victim = "http://10.0.0.1:8080"

func TestSameProcessCannotMove(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 5), at(0))
	rec.take()

	// Same started_at, a far seq, another url: a take-over.
	r.Apply(beat("a", 5+1<<50, withURL("http://10.6.6.6:80")), at(time.Second))
	ev := mustKinds(t, rec, EventConflict)
	if !strings.Contains(ev[0].Detail, victim) || !strings.Contains(ev[0].Detail, "10.6.6.6") {
		t.Errorf("conflict detail %q should name the url kept and the one ignored", ev[0].Detail)
	}
	if m, _ := member(t, r, "a"); m.URL != victim || m.Seq != 5 {
		t.Fatalf("take-over changed the member: %+v", m)
	}
	mustRouted(t, r, "a")
	if got := settled(t, r).Routes[0].Dial; got != "10.0.0.1:8080" {
		t.Fatalf("routed to %s", got)
	}

	// The victim keeps being heard, and keeps routing.
	for i := int64(6); i < 20; i++ {
		r.Apply(beat("a", i), at(time.Duration(i)*time.Second))
		r.Sweep(at(time.Duration(i) * time.Second))
	}
	mustKinds(t, rec)
	if m, _ := member(t, r, "a"); m.Seq != 19 || m.State != StateActive {
		t.Fatalf("victim not heard after the attempt: %+v", m)
	}

	// Even with a small seq step, the url of a process does not change.
	r.Apply(beat("a", 20, withURL("http://10.6.6.6:80")), at(20*time.Second))
	mustKinds(t, rec, EventConflict)
	r.Apply(beat("a", 21), at(21*time.Second))
	mustKinds(t, rec)
	mustRouted(t, r, "a")
}

func TestImplausibleSeqJumpIsAConflict(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 5), at(0))
	rec.take()
	// Same url, a seq that would make every real heartbeat look old.
	r.Apply(beat("a", 5+1<<50, draining()), at(time.Second))
	mustKinds(t, rec, EventConflict)
	mustState(t, r, "a", StateActive)
	r.Apply(beat("a", 6), at(2*time.Second))
	if m, _ := member(t, r, "a"); m.Seq != 6 {
		t.Fatalf("victim's next heartbeat not accepted: %+v", m)
	}
	mustRouted(t, r, "a")
}

func TestRealSeqGapsAreAccepted(t *testing.T) {
	type gap struct {
		name     string
		interval int // ms
		silence  time.Duration
		jump     int64
	}
	for _, g := range []gap{
		{"a few lost messages", 1000, time.Second, 20},
		{"discover answers of many gateways", 1000, time.Second, 500},
		{"fast publisher, gateway frozen for minutes", 100, 10 * time.Minute, 6000 + 500},
		{"slow publisher, partitioned for an hour", 60000, time.Hour, 60 + 500},
		{"state changes in a burst", 1000, 0, SeqSlack},
		{"silent for a day", 1000, 24 * time.Hour, 86400 * 4},
	} {
		t.Run(g.name, func(t *testing.T) {
			r, rec := newReg(t, Config{})
			r.Apply(beat("a", 1, withInterval(g.interval)), at(0))
			r.Freeze() // a gateway that lost NATS hears nothing meanwhile
			r.Thaw(at(g.silence))
			rec.take()
			r.Apply(beat("a", 1+g.jump, withInterval(g.interval), draining()), at(g.silence))
			mustKinds(t, rec, EventDraining)
		})
	}
}

func TestClockRejections(t *testing.T) {
	far := func(s string) mod {
		return func(m *heartbeat.Message) {
			tm, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				panic(err)
			}
			m.StartedAt = tm
		}
	}
	tests := []struct {
		name string
		cfg  Config
		m    *heartbeat.Message
		ok   bool
	}{
		{"now", Config{}, beat("a", 1, withStart(t0)), true},
		{"within default skew", Config{}, beat("a", 1, withStart(t0.Add(59*time.Second))), true},
		{"beyond default skew", Config{}, beat("a", 1, withStart(t0.Add(61*time.Second))), false},
		{"100 years ahead", Config{}, beat("a", 1, withStart(t0.AddDate(100, 0, 0))), false},
		{"configured skew", Config{ClockSkew: 10 * time.Minute}, beat("a", 1, withStart(t0.Add(9*time.Minute))), true},
		{"beyond configured skew", Config{ClockSkew: time.Second}, beat("a", 1, withStart(t0.Add(2*time.Second))), false},
		{"year 10000 in UTC", Config{}, beat("a", 1, far("9999-12-31T23:59:59.999-23:59")), false},
		{"year 1999", Config{}, beat("a", 1, far("1999-12-31T23:59:59.999Z")), false},
		{"year 2000 in UTC", Config{}, beat("a", 1, far("1999-12-31T23:59:59.999-01:00")), true},
		{"year 0001", Config{}, beat("a", 1, withStart(time.Time{})), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, tt.cfg)
			r.Apply(tt.m, at(0))
			ev := rec.take()
			_, known := member(t, r, "a")
			if tt.ok {
				if !known {
					t.Fatalf("rejected: %+v", ev)
				}
				return
			}
			if known || len(ev) != 1 || ev[0].Kind != EventRejected || ev[0].Reason != "clock" {
				t.Fatalf("member %v, events %+v; want one rejection for clock", known, ev)
			}
			// The status page's JSON never meets such a time.
			if _, err := json.Marshal(r.Members()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestForgedLeavingChangesNothing(t *testing.T) {
	tests := []struct {
		name   string
		m      *heartbeat.Message
		reason string // a rejection expected, or none
	}{
		{"100 years ahead", beat("a", 1, withStart(p0.AddDate(100, 0, 0)), leaving()), "clock"},
		{"a newer process within the skew", beat("a", 1, withStart(t0.Add(30*time.Second)), leaving()), ""},
		{"a newer process", beat("a", 1, started(time.Minute), leaving()), ""},
		{"an older process", beat("a", 99, started(-time.Minute), leaving()), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newReg(t, Config{})
			r.Apply(beat("a", 7), at(0))
			rec.take()
			r.Apply(tt.m, at(time.Minute+time.Second))
			ev := rec.take()
			if tt.reason == "" && len(ev) != 0 || tt.reason != "" && (len(ev) != 1 || ev[0].Reason != tt.reason) {
				t.Fatalf("events %+v, want rejection %q", ev, tt.reason)
			}
			mustState(t, r, "a", StateActive)
			mustRouted(t, r, "a")
			if m, _ := member(t, r, "a"); !m.StartedAt.Equal(p0) || m.Seq != 7 {
				t.Fatalf("member changed: %+v", m)
			}
			// The known process itself may leave.
			r.Apply(beat("a", 8, leaving()), at(time.Minute+2*time.Second))
			mustState(t, r, "a", StateLeft)
		})
	}
}

func TestStrayMessagesDoNotStarveTheKnownProcess(t *testing.T) {
	strays := map[string]func(i int64) *heartbeat.Message{
		"older process":   func(i int64) *heartbeat.Message { return beat("a", i, started(-time.Hour)) },
		"conflicting url": func(i int64) *heartbeat.Message { return beat("a", 100+i, withURL("http://10.6.6.6:80")) },
		"replayed old seq": func(i int64) *heartbeat.Message {
			return beat("a", 1)
		},
		"newer leaving": func(i int64) *heartbeat.Message { return beat("a", i, started(time.Minute), leaving()) },
	}
	for name, stray := range strays {
		t.Run(name, func(t *testing.T) {
			r, rec := newReg(t, Config{})
			r.Apply(beat("a", 1), at(0))
			rec.take()
			seq := int64(1)
			// 50 strays a second for a minute, the victim beating once a second.
			for ms := int64(20); ms <= 60000; ms += 20 {
				now := at(time.Duration(ms) * time.Millisecond)
				r.Apply(stray(ms), now)
				if ms%1000 == 0 {
					seq++
					r.Apply(beat("a", seq), now)
				}
				r.Sweep(now)
			}
			m, _ := member(t, r, "a")
			if m.Seq != seq || m.State != StateActive || m.URL != victim {
				t.Fatalf("victim starved: %+v, want seq %d", m, seq)
			}
			mustRouted(t, r, "a")
			rated := 0
			for _, ev := range rec.take() {
				switch {
				case ev.Kind == EventRejected && ev.Reason == "rate":
					rated++
					if !strings.Contains(ev.Detail, "not the known process") {
						t.Errorf("rate rejection blames the known process: %+v", ev)
					}
				case ev.Kind == EventConflict:
				default:
					t.Errorf("unexpected event %+v", ev)
				}
			}
			if rated == 0 && name != "replayed old seq" {
				t.Errorf("50 strays a second were not rate limited")
			}
		})
	}
}

func TestAllowIDs(t *testing.T) {
	cfg := Config{AllowIDs: []string{"app-*", "worker[0-9]", "exact"}}
	for _, tt := range []struct {
		id string
		ok bool
	}{
		{"app-1", true}, {"app-", true}, {"worker7", true}, {"exact", true},
		{"app1", false}, {"worker10", false}, {"exact2", false}, {"intruder", false},
	} {
		t.Run(tt.id, func(t *testing.T) {
			r, rec := newReg(t, cfg)
			r.Apply(beat(tt.id, 1, withPriority(-1000)), at(0))
			ev := rec.take()
			_, known := member(t, r, tt.id)
			if known != tt.ok {
				t.Fatalf("known %v, want %v (%+v)", known, tt.ok, ev)
			}
			if !tt.ok && (len(ev) != 1 || ev[0].Kind != EventRejected || ev[0].Reason != "id" || ev[0].ID != tt.id) {
				t.Fatalf("events %+v, want one rejection for id", ev)
			}
			if !tt.ok && len(settled(t, r).Routes) != 0 {
				t.Fatalf("routed %v", routedIDs(settled(t, r)))
			}
		})
	}
	r, _ := newReg(t, Config{})
	r.Apply(beat("anything", 1), at(0))
	mustRouted(t, r, "anything") // no allow_ids: any id
}

func TestPriorityRange(t *testing.T) {
	r, rec := newReg(t, Config{
		PriorityRange: &PriorityRange{Min: 0, Max: 100},
		Priority:      map[string]int{"boss": -50},
	})
	r.Apply(beat("good", 1, withPriority(10)), at(0))
	r.Apply(beat("greedy", 1, withPriority(-1000)), at(0))
	r.Apply(beat("shy", 1, withPriority(1000)), at(0))
	r.Apply(beat("boss", 1, withPriority(1000)), at(0))
	ev := rec.take()
	var clamped []string
	for _, e := range ev {
		if e.Kind == EventPriorityClamped {
			clamped = append(clamped, e.ID)
			if e.Detail == "" {
				t.Errorf("clamp event without detail: %+v", e)
			}
		}
	}
	if !slices.Equal(clamped, []string{"greedy", "shy"}) {
		t.Fatalf("clamped %v, want greedy and shy (%+v)", clamped, ev)
	}
	want := map[string][2]int{"good": {10, 10}, "greedy": {0, -1000}, "shy": {100, 1000}, "boss": {-50, 1000}}
	for id, w := range want {
		m, _ := member(t, r, id)
		if m.Priority != w[0] || m.AnnouncedPriority != w[1] {
			t.Errorf("%s: priority %d announced %d, want %v", id, m.Priority, m.AnnouncedPriority, w)
		}
	}
	if got := routedIDs(settled(t, r)); !slices.Equal(got, []string{"boss", "greedy", "good", "shy"}) {
		t.Fatalf("routed %v", got)
	}
	// Once per process: the next heartbeats say nothing, a restart does.
	r.Apply(beat("greedy", 2, withPriority(-1000)), at(time.Second))
	mustKinds(t, rec)
	r.Apply(beat("greedy", 1, withPriority(-1000), started(time.Minute)), at(2*time.Minute))
	mustKinds(t, rec, EventRestart, EventPriorityClamped)
}

func TestScheme(t *testing.T) {
	tests := []struct {
		scheme, url string
		ok          bool
		hint        string
	}{
		{"", "http://10.0.0.1:80", true, ""},
		{"", "https://10.0.0.1:443", false, "tls"},
		{"http", "HTTPS://10.0.0.1:443", false, "tls"},
		{"https", "https://10.0.0.1:443", true, ""},
		{"https", "http://10.0.0.1:80", false, "clear"},
	}
	for _, tt := range tests {
		t.Run(tt.scheme+" "+tt.url, func(t *testing.T) {
			r, rec := newReg(t, Config{Scheme: tt.scheme})
			r.Apply(beat("a", 1, withURL(tt.url)), at(0))
			ev := rec.take()
			_, known := member(t, r, "a")
			if known != tt.ok {
				t.Fatalf("known %v, want %v (%+v)", known, tt.ok, ev)
			}
			if !tt.ok && (len(ev) != 1 || ev[0].Reason != "scheme" || !strings.Contains(ev[0].Detail, tt.hint)) {
				t.Fatalf("events %+v, want a scheme rejection mentioning %q", ev, tt.hint)
			}
		})
	}
}

func TestNewValidatesTrustConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // "" means valid
	}{
		{"globs", Config{AllowIDs: []string{"app-*", "w[0-9]"}}, ""},
		{"bad glob", Config{AllowIDs: []string{"app-["}}, "allow_ids"},
		{"empty glob", Config{AllowIDs: []string{""}}, "allow_ids"},
		{"range", Config{PriorityRange: &PriorityRange{Min: -10, Max: 10}}, ""},
		{"range min > max", Config{PriorityRange: &PriorityRange{Min: 10, Max: -10}}, "priority_range"},
		{"range outside protocol", Config{PriorityRange: &PriorityRange{Min: -2000, Max: 0}}, "priority_range"},
		{"negative skew", Config{ClockSkew: -time.Second}, "clock_skew"},
		{"scheme https", Config{Scheme: "https"}, ""},
		{"scheme ftp", Config{Scheme: "ftp"}, "scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c := r.Config(); c.ClockSkew != DefaultClockSkew || c.Scheme == "" {
					t.Errorf("defaults not applied: %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error about %s", err, tt.want)
			}
		})
	}
}

func TestAllowNetworksAdmitsDNSNames(t *testing.T) {
	r, rec := newReg(t, Config{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	r.Apply(beat("app1", 1, withURL("http://app1:8080")), at(0))
	r.Apply(beat("app2", 1, withURL("http://11.0.0.1:8080")), at(0))
	ev := mustKinds(t, rec, EventJoin, EventRejected)
	if ev[1].Reason != "network" || ev[1].ID != "app2" {
		t.Fatalf("events %+v", ev)
	}
	mustRouted(t, r, "app1")
}

func TestTakeOverThroughObserve(t *testing.T) {
	r, rec := newReg(t, Config{})
	enc := func(m *heartbeat.Message) []byte {
		b, err := heartbeat.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	const subject = "cx.ha.hb.a"
	for seq := int64(1); seq <= 3; seq++ {
		if err := r.Observe(subject, enc(beat("a", seq)), at(time.Duration(seq)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	rec.take()
	// The attacker's copy with the victim's own seq, then the steady state
	// of both: the attacker's payload is never recognised as the victim's.
	_ = r.Observe(subject, enc(beat("a", 3, withURL("http://10.6.6.6:80"))), at(3*time.Second))
	_ = r.Observe(subject, enc(beat("a", 4, withURL("http://10.6.6.6:80"))), at(3*time.Second))
	for seq := int64(4); seq <= 10; seq++ {
		_ = r.Observe(subject, enc(beat("a", seq)), at(time.Duration(seq)*time.Second))
		_ = r.Observe(subject, enc(beat("a", seq+1, withURL("http://10.6.6.6:80"))), at(time.Duration(seq)*time.Second))
	}
	for _, ev := range rec.take() {
		if ev.Kind != EventConflict || !strings.Contains(ev.Detail, "url "+victim+" is kept") {
			t.Errorf("event %+v, want only conflicts keeping %s", ev, victim)
		}
	}
	if m, _ := member(t, r, "a"); m.URL != victim || m.Seq != 10 {
		t.Fatalf("member %+v", m)
	}
	if got := settled(t, r).Routes[0].Dial; got != "10.0.0.1:8080" {
		t.Fatalf("routed to %s", got)
	}
}

func TestYear10000ThroughObserve(t *testing.T) {
	r, rec := newReg(t, Config{})
	payload := `{"proto":1,"id":"a","url":"http://10.0.0.1:8080","state":"ready","started_at":"9999-12-31T23:59:59.999-23:59","seq":1,"interval_ms":1000}`
	_ = r.Observe("cx.ha.hb.a", []byte(payload), at(0))
	ev := mustKinds(t, rec, EventRejected)
	if ev[0].Reason != "clock" || !strings.Contains(ev[0].Detail, "10000") {
		t.Fatalf("event %+v", ev[0])
	}
	if len(r.Members()) != 0 {
		t.Fatal("stored")
	}
}

// A leaving is accepted only from the known process: one from a newer
// started_at may be forged (a single message would evict the instance), so
// it changes nothing; the known process leaves by itself or turns stale.
func TestLeavingFromANewerProcessChangesNothing(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 7), at(0))
	rec.take()
	r.Apply(beat("a", 1, started(time.Hour), leaving()), at(time.Second))
	mustState(t, r, "a", StateActive)
	mustRouted(t, r, "a")
	mustKinds(t, rec)
}
