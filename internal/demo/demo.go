// Package demo is `caddy-cx demo`: the whole topology on one machine. An
// embedded NATS server, the gateway (in-process Caddy, a Caddyfile built
// in memory) and three demo instances that announce themselves, with a
// live membership log and an optional scripted failover drill under load.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Options configure the demo. Zero ports pick free ones.
type Options struct {
	// Port is the site's port on 127.0.0.1.
	Port int
	// AdminPort is Caddy's admin API (and metrics) port on 127.0.0.1.
	AdminPort int
	// NATSPort is the embedded NATS server's port on 127.0.0.1.
	NATSPort int
	// Interval is the instances' heartbeat period; default 250ms.
	Interval time.Duration
	// Prefix is the subject prefix; default cx.ha.
	Prefix string
	// Drill runs the failover drill and returns instead of waiting.
	Drill bool
	// Duration is how long the drill keeps the load on after each fault;
	// default 2s.
	Duration time.Duration
	// Clients is the number of concurrent clients of the drill; default 8.
	Clients int
	// Verbose shows the gateway's info logs (errors only otherwise: the
	// membership log says the rest).
	Verbose bool
	// Gateways is how many gateways run on the embedded NATS, gw1..gwN;
	// default 1. Gateway 1 runs in this process, the others are child
	// processes on free ports (Caddy is one per process).
	Gateways int
	// Out receives the URLs, the membership log and the report.
	Out io.Writer
}

// ErrDrillErrors is returned when clients saw errors during the drill.
var ErrDrillErrors = errors.New("demo: clients saw errors during the drill")

// ErrVersionSwitches is returned when the version served to clients did
// not change exactly once, in the drill's deploy step.
var ErrVersionSwitches = errors.New("drill: the version served to clients did not switch exactly once")

func (o *Options) setDefaults() error {
	if o.Interval == 0 {
		o.Interval = 250 * time.Millisecond
	}
	if o.Prefix == "" {
		o.Prefix = "cx.ha"
	}
	if o.Duration == 0 {
		o.Duration = 2 * time.Second
	}
	if o.Clients == 0 {
		o.Clients = 8
	}
	if o.Gateways == 0 {
		o.Gateways = 1
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	switch {
	case o.Interval < 100*time.Millisecond || o.Interval > time.Minute:
		return fmt.Errorf("--interval %v: use 100ms to 60s", o.Interval)
	case o.Duration < 100*time.Millisecond:
		return fmt.Errorf("--duration %v: use at least 100ms", o.Duration)
	case o.Clients < 1 || o.Clients > 1000:
		return fmt.Errorf("--clients %d: use 1 to 1000", o.Clients)
	case o.Gateways < 1 || o.Gateways > MaxGateways:
		return fmt.Errorf("--gateways %d: use 1 to %d", o.Gateways, MaxGateways)
	}
	var err error
	for _, p := range []struct {
		port *int
		flag string
	}{{&o.Port, "--port"}, {&o.AdminPort, "--admin-port"}, {&o.NATSPort, "--nats-port"}} {
		if *p.port, err = claimPort(*p.port, p.flag); err != nil {
			return err
		}
	}
	return nil
}

func (o *Options) logLevel() string {
	if o.Verbose {
		return "INFO"
	}
	return "ERROR"
}

// Run starts the demo and keeps it running until ctx is done or, with
// Drill, until the drill is over. It returns the drill's report (nil
// without Drill), ErrDrillErrors if clients saw errors and
// ErrVersionSwitches if they were not switched to the deployed version
// exactly once.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	gw, err := startGateway(&o)
	if err != nil {
		return nil, err
	}
	defer func() { _ = gw.stop() }()
	// Gateways 2..N run on gateway 1's embedded NATS, so they stop first
	// (deferred later), announcing that they leave while it still runs.
	children, err := startChildGateways(&o)
	if err != nil {
		return nil, err
	}
	defer stopChildGateways(children)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", o.NATSPort)
	w, err := startWatch(natsURL, o.Prefix, o.Out)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	fleet := newFleet(natsURL, &o)
	defer fleet.leave(w)
	site := fmt.Sprintf("http://127.0.0.1:%d", o.Port)
	printURLs(&o, site, children)
	if err := fleet.start(ctx, w, site); err != nil {
		return nil, err
	}
	if !o.Drill {
		w.printf("To see failover under load: caddy-cx demo --drill. Ctrl-C stops everything.")
		<-ctx.Done()
		return nil, nil
	}
	return runDrill(ctx, &o, w, fleet, site)
}

func runDrill(ctx context.Context, o *Options, w *watch, f *fleet, site string) (*Report, error) {
	d := &drill{ctx: ctx, o: o, watch: w, primary: f.instances[0],
		roll:   []*Instance{f.instances[2], f.instances[1], f.instances[0]},
		deploy: []*Instance{f.instances[2], f.instances[0], f.instances[1]}}
	steps, err := d.run(site)
	report := &Report{Steps: steps, Clients: o.Clients, Interval: o.Interval, StaleAfter: staleAfter(o.Interval)}
	if err != nil {
		return report, err
	}
	report.Print(o.Out)
	if report.Errors() > 0 {
		return report, ErrDrillErrors
	}
	return report, report.versionsErr()
}

func printURLs(o *Options, site string, children []*childGateway) {
	admin := fmt.Sprintf("http://127.0.0.1:%d", o.AdminPort)
	out := o.Out
	if len(children) == 0 {
		fmt.Fprintf(out, "caddy-cx demo: an embedded NATS server, the gateway and three instances on this machine.\n\n")
	} else {
		fmt.Fprintf(out, "caddy-cx demo: an embedded NATS server, %d gateways and three instances on this machine.\n\n", len(children)+1)
	}
	fmt.Fprintf(out, "  site            %s/\n", site)
	fmt.Fprintf(out, "  status page     %s/ha\n", site)
	if get(admin+"/cx/instances") == http.StatusOK {
		fmt.Fprintf(out, "  instances JSON  %s/cx/instances\n", admin)
	}
	fmt.Fprintf(out, "  metrics         %s/metrics\n", admin)
	fmt.Fprintf(out, "  admin API       %s/config/\n", admin)
	fmt.Fprintf(out, "  NATS            nats://127.0.0.1:%d   (watch: nats sub '%s.>' -s nats://127.0.0.1:%d)\n\n", o.NATSPort, o.Prefix, o.NATSPort)
	if len(children) > 0 {
		printGateways(o, site, admin, children)
	}
	fmt.Fprintf(out, "app1 has priority 0 (the primary); app2 and app3 have priority 1 (the backups).\n")
	fmt.Fprintf(out, "All three run version %s; the gateway routes one version at a time (versions consistent).\n", StartVersion)
	fmt.Fprintf(out, "Membership, one line per change:\n")
}

func get(url string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// printGateways lists every gateway of the fleet: gw1 is this process (the
// URLs above), the others its child processes, all on one NATS.
func printGateways(o *Options, site, admin string, children []*childGateway) {
	out := o.Out
	fmt.Fprintf(out, "%d gateways on that NATS server, each with its status page (Gateways section) and admin API:\n", len(children)+1)
	line := func(id, site, admin string) {
		fmt.Fprintf(out, "  %-4s site %s/  status page %s/ha  gateways %s/cx/gateways\n", id, site, site, admin)
	}
	line("gw1", site, admin)
	for _, c := range children {
		line(c.id, c.site(), c.admin())
	}
	fmt.Fprintf(out, "Try: curl -X POST %s/cx/instances/app1/drain   (then .../app1/ready) and watch every status page.\n\n", admin)
}
