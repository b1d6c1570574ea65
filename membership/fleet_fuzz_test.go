package membership

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// FuzzFleet drives a small fleet with a script of valid heartbeats and
// observations (restarts, replays, leaves, jumps, floods, spoofs) mixed
// with a raw subject and payload, and checks its invariants after every
// step.
func FuzzFleet(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7}, "cx.ha.gw.gw1", []byte(`{"proto":1,"kind":"gateway","id":"gw1","state":"active","started_at":"2026-11-25T20:00:00Z","seq":3,"interval_ms":100}`))
	f.Add([]byte{8, 0, 0, 9, 1, 255, 10, 2, 3, 11, 0, 1}, "cx.ha.obs.gw0", []byte(`{"proto":1,"kind":"observation","gateway":"gw0","started_at":"2026-11-25T20:00:00.123456789Z","seq":9,"failed":[{"id":"a","started_at":"2026-11-25T20:00:00Z"}]}`))
	f.Add(make([]byte, 64), "cx.ha.gw.*", []byte("\xff"))
	f.Fuzz(func(t *testing.T, script []byte, subject string, payload []byte) {
		const maxGW = 3
		var events int
		fl := NewFleet(FleetConfig{Prefix: fleetPrefix, Self: "gw0", MaxGateways: maxGW, OnEvent: func(ev FleetEvent) {
			events++
			if ev.Gateway != "" && !heartbeat.ValidID(ev.Gateway) {
				t.Fatalf("event with an unsafe gateway id %q", ev.Gateway)
			}
		}})
		now := t0
		lastObs := map[string]int64{} // gateway@started -> last accepted observation seq
		for i := 0; i+2 < len(script); i += 3 {
			op, a, b := script[i], script[i+1], script[i+2]
			id := fmt.Sprintf("gw%d", a%5)
			start := p0.Add(time.Duration(b%4) * time.Second)
			seq := int64(b) + 1
			switch op % 8 {
			case 0, 1:
				mods := []gwMod{gwStart(start), gwPrimary(fmt.Sprintf("app%d", a%3)), gwInterval(100 * int(1+b%3))}
				if op%8 == 1 && a%4 == 0 {
					mods = append(mods, gwLeaving())
				}
				subj, data := gwBeat(t, id, seq, mods...)
				m, err := fl.ObserveGateway(subj, data, now)
				if (m == nil) == (err == nil) {
					t.Fatalf("ObserveGateway returned %v and %v", m, err)
				}
			case 2:
				subj, data := obsMsg(t, id, start, seq)
				before := gatewayState(fl, id, now)
				o, err := fl.ObserveFailures(subj, data, now)
				if o != nil {
					if err != nil || id == "gw0" {
						t.Fatalf("observation %+v with %v", o, err)
					}
					if before == nil || before.GatewayState != StateActiveName || !before.StartedAt.Equal(start) {
						t.Fatalf("observation of %s@%v accepted from a gateway not announced: %+v", id, start, before)
					}
					key := id + "@" + start.String()
					if seq <= lastObs[key] {
						t.Fatalf("observation seq %d accepted after %d", seq, lastObs[key])
					}
					lastObs[key] = seq
				}
			case 3:
				now = now.Add(time.Duration(b) * 10 * time.Millisecond)
			case 4:
				fl.ObserveGateway(subject, payload, now)
			case 5:
				fl.ObserveFailures(subject, payload, now)
			case 6:
				mutated := strings.Replace(string(payload), "gw", id, 1)
				fl.ObserveGateway(heartbeat.GatewaySubject(fleetPrefix, id), []byte(mutated), now)
			case 7:
				// a flood of new ids
				for j := range int(b % 16) {
					subj, data := gwBeat(t, fmt.Sprintf("f%d", j), 1)
					fl.ObserveGateway(subj, data, now)
				}
			}
			checkFleet(t, fl, now, maxGW)
		}
		_ = events
	})
}

func gatewayState(f *Fleet, id string, now time.Time) *Gateway {
	for _, g := range f.Gateways(now) {
		if g.ID == id {
			return &g
		}
	}
	return nil
}

func checkFleet(t *testing.T, f *Fleet, now time.Time, maxGW int) {
	t.Helper()
	gws := f.Gateways(now)
	if len(gws) > maxGW {
		t.Fatalf("%d gateways, more than %d", len(gws), maxGW)
	}
	live := map[string]bool{}
	for i, g := range gws {
		if i > 0 && gws[i-1].ID >= g.ID {
			t.Fatal("gateways not ordered by id")
		}
		switch g.GatewayState {
		case StateActiveName:
			if now.Sub(g.LastSeen) > g.StaleAfter {
				t.Fatalf("%s active %v after its last heartbeat, stale after %v", g.ID, now.Sub(g.LastSeen), g.StaleAfter)
			}
			live[strings.Join(sortedCopy(g.Primary), ",")] = true
		case StateStaleName, StateLeftName:
		default:
			t.Fatalf("%s in state %q", g.ID, g.GatewayState)
		}
		if g.Self != (g.ID == "gw0") {
			t.Fatalf("%s self %v", g.ID, g.Self)
		}
		if len(g.Primary) > heartbeat.MaxGatewayPrimary || g.Since.After(now) {
			t.Fatalf("%+v", g)
		}
	}
	since, split := f.Split(now)
	if split != (len(live) > 1) || (split && since.After(now)) {
		t.Fatalf("split %v since %v with live primaries %v", split, since, live)
	}
	versions := f.Versions(now)
	if !slices.IsSorted(versions) {
		t.Fatalf("versions %v", versions)
	}
}
