//go:build unix

package caddymodule

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// TestFleetCostAt1000Instances measures what the fleet adds per gateway
// with 1,000 instances and 3 gateways: CPU time and NATS messages a
// second, idle and with a failure shared every 100ms. A measurement, not
// a check (this machine is shared): it runs with CX_FLEET_COST=1 and only
// reports; integration's TestFleetCost measures the same with processes.
func TestFleetCostAt1000Instances(t *testing.T) {
	if os.Getenv("CX_FLEET_COST") == "" {
		t.Skip("a measurement: run with CX_FLEET_COST=1 -v")
	}
	natsURL := startNATS(t)
	var gws []*Service
	for k := range 3 {
		gws = append(gws, fleetGateway(t, natsURL, fmt.Sprintf("gw-%d", k), func(set *serviceSettings) {
			set.membership.StaleAfter = time.Hour
		}))
	}
	now := time.Now().UTC()
	var ids []string
	for k := range 1000 {
		m := heartbeat.Message{Proto: heartbeat.Proto, ID: fmt.Sprintf("app%d", k), URL: fmt.Sprintf("http://127.0.0.1:%d", 20000+k),
			State: heartbeat.StateReady, StartedAt: now, Seq: 1, IntervalMS: 1000, Priority: k % 3, Version: "1"}
		ids = append(ids, m.ID)
		for _, s := range gws {
			msg := m
			s.reg.Apply(&msg, now)
		}
	}
	routed(t, ids, gws...)
	knowEachOther(t, gws...)
	nc := connect(t, natsURL)
	var msgs atomic.Int64
	sub, _ := nc.Subscribe(heartbeat.DefaultPrefix+".>", func(*nats.Msg) { msgs.Add(1) })
	defer sub.Unsubscribe()
	_ = nc.Flush()

	measure := func(what string, during func(stop <-chan struct{})) {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { during(stop); close(done) }()
		msgs.Store(0)
		cpu0, wall0 := cpuTime(t), time.Now()
		time.Sleep(3 * time.Second) // a measurement window, not synchronisation
		cpu, wall := cpuTime(t)-cpu0, time.Since(wall0)
		close(stop)
		<-done
		t.Logf("%s: %.2f%% of a core per gateway (process CPU %v over %v, 3 gateways), %.1f NATS messages/s per gateway",
			what, 100*cpu.Seconds()/wall.Seconds()/3, cpu.Round(time.Millisecond), wall.Round(time.Millisecond),
			float64(msgs.Load())/wall.Seconds()/3)
	}
	measure("idle", func(stop <-chan struct{}) { <-stop })
	measure("a failure shared every 100ms", func(stop <-chan struct{}) {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				dial := memberDial(t, gws[0], ids[k%len(ids)])
				gws[0].health.fail(dial, time.Now())
			}
		}
	})
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(t testing.TB) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
