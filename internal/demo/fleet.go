package demo

import (
	"context"
	"net/http"
	"time"

	"github.com/caddy-cx/caddy-cx/membership"
)

// The demo instances run StartVersion; the drill's deploy step replaces
// them with instances of DeployVersion (newer in natural order: 10 > 9).
const (
	StartVersion  = "2026.9"
	DeployVersion = "2026.10"
)

// fleet is the three demo instances: app1 the primary, app2 and app3 the
// backups.
type fleet struct {
	instances []*Instance
}

func newFleet(natsURL string, o *Options) *fleet {
	f := &fleet{}
	for i, id := range []string{"app1", "app2", "app3"} {
		f.instances = append(f.instances, &Instance{ID: id, Priority: min(i, 1), Version: StartVersion,
			natsURL: natsURL, prefix: o.Prefix, interval: o.Interval})
	}
	return f
}

// start starts every instance and waits until each is active and the
// gateway serves the site.
func (f *fleet) start(ctx context.Context, w *watch, site string) error {
	d := &drill{ctx: ctx, watch: w}
	for _, in := range f.instances {
		if err := in.Start(); err != nil {
			return err
		}
	}
	for _, in := range f.instances {
		if err := d.until(func() bool { return w.active(in.ID, in.StartedAt()) }, in.ID+" to join", 10*time.Second); err != nil {
			return err
		}
	}
	return d.until(func() bool { return get(site+"/whoami") == http.StatusOK }, "the gateway to serve "+site, 10*time.Second)
}

// leave lets every running instance leave gracefully, waiting until the
// membership log showed it.
func (f *fleet) leave(w *watch) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, in := range f.instances {
		_ = in.Leave(ctx) // an instance the drill left stopped is not running
	}
	d := &drill{ctx: ctx, watch: w}
	_ = d.until(func() bool {
		for _, m := range w.reg.Members() {
			if m.State == membership.StateActive || m.State == membership.StateDraining {
				return false
			}
		}
		return true
	}, "every instance to leave", 2*time.Second)
}
