package demo

import (
	"context"
	"fmt"
	"time"
)

// drill runs the scripted failover drill against the demo instances
// while clients keep sending requests through the gateway.
type drill struct {
	ctx     context.Context
	o       *Options
	load    *load
	watch   *watch
	primary *Instance
	roll    []*Instance // in rolling order, the primary last
	// deploy is the order the deploy step replaces the instances in: a
	// backup, the primary, the other backup. Without `versions
	// consistent`, the two backups would serve the old and the new version
	// side by side while the primary is away, and clients would alternate.
	deploy []*Instance
}

func (d *drill) run(siteURL string) ([]Step, error) {
	d.load = startLoad(siteURL, d.o.Clients)
	err := d.hold(d.o.Duration / 2)
	for _, step := range []func() error{d.kill, d.hang, d.rolling, d.deploying} {
		if err != nil {
			break
		}
		err = step()
	}
	steps := d.load.stop()
	return steps, err
}

// kill crashes the primary and restarts it once traffic moved.
func (d *drill) kill() error {
	p := d.primary
	d.step("kill", "kill "+p.ID+": crash (heartbeats stop, connections cut)", p.ID)
	d.load.fault()
	if err := p.Kill(); err != nil {
		return err
	}
	if err := d.await(d.load.servedBy(time.Now(), not(p.ID)), "traffic to move off "+p.ID, 10*time.Second); err != nil {
		return err
	}
	if err := d.hold(d.o.Duration); err != nil {
		return err
	}
	return d.restart(p)
}

// hang makes the primary hang; once traffic moved it is killed and
// restarted, as a supervisor would.
func (d *drill) hang() error {
	p := d.primary
	d.step("hang", "hang "+p.ID+": stops answering and heartbeating", p.ID)
	d.load.fault()
	if err := p.Hang(); err != nil {
		return err
	}
	within := staleAfter(d.o.Interval) + 10*time.Second
	if err := d.await(d.load.servedBy(time.Now(), not(p.ID)), "traffic to move off the hung "+p.ID, within); err != nil {
		return err
	}
	if err := d.hold(d.o.Duration); err != nil {
		return err
	}
	if err := p.Kill(); err != nil {
		return err
	}
	return d.restart(p)
}

// rolling restarts every instance in turn: leave, a deploy's pause,
// start, wait until routed. The version stays.
func (d *drill) rolling() error {
	d.step("roll", "roll "+names(d.roll)+": leave, restart, one at a time", d.primary.ID)
	return d.replace(d.roll, "")
}

// deploying replaces every instance in turn with one of DeployVersion,
// as a rolling deploy does: leave, a pause, a new process of the new
// version. The gateway must switch clients to it once, in one step.
func (d *drill) deploying() error {
	d.step("deploy", "deploy "+DeployVersion+" to "+names(d.deploy)+": leave, new version, one at a time", d.primary.ID)
	return d.replace(d.deploy, DeployVersion)
}

// replace lets each instance of order leave and starts it again, with
// version if set, one at a time; the primary's leaving is the fault.
func (d *drill) replace(order []*Instance, version string) error {
	for _, in := range order {
		if in == d.primary {
			d.load.fault()
		}
		if err := in.Leave(d.ctx); err != nil {
			return err
		}
		if err := d.hold(d.o.Duration / 4); err != nil {
			return err
		}
		if version != "" {
			in.SetVersion(version)
		}
		if err := d.restart(in); err != nil {
			return err
		}
	}
	return d.hold(d.o.Duration / 2)
}

func names(ins []*Instance) string {
	s := ""
	for i, in := range ins {
		if i > 0 {
			s += ", "
		}
		s += in.ID
	}
	return s
}

// step starts a step of the report and logs it.
func (d *drill) step(name, what, faultID string) {
	d.watch.printf("%s  drill: %s", time.Now().Format("15:04:05.000"), what)
	d.load.begin(name, what, faultID)
}

// restart starts in again and waits until the gateway routes to it: for
// the primary, until it serves again.
func (d *drill) restart(in *Instance) error {
	started := time.Now()
	if err := in.Start(); err != nil {
		return err
	}
	if in == d.primary {
		return d.await(d.load.servedBy(started, is(in.ID)), in.ID+" to serve again", 10*time.Second)
	}
	return d.until(func() bool { return d.watch.active(in.ID, in.StartedAt()) }, in.ID+" to be active again", 10*time.Second)
}

func (d *drill) await(ch <-chan struct{}, what string, within time.Duration) error {
	select {
	case <-ch:
		return nil
	case <-d.ctx.Done():
		return d.ctx.Err()
	case <-time.After(within):
		return fmt.Errorf("drill: waited %v for %s", within, what)
	}
}

func (d *drill) until(cond func() bool, what string, within time.Duration) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-d.ctx.Done():
			return d.ctx.Err()
		case <-deadline:
			return fmt.Errorf("drill: waited %v for %s", within, what)
		}
	}
	return nil
}

// hold keeps the load running for dur.
func (d *drill) hold(dur time.Duration) error {
	select {
	case <-time.After(dur):
		return nil
	case <-d.ctx.Done():
		return d.ctx.Err()
	}
}

func is(id string) func(string) bool  { return func(s string) bool { return s == id } }
func not(id string) func(string) bool { return func(s string) bool { return s != id } }
