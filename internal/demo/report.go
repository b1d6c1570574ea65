package demo

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of the drill.
type Report struct {
	Steps      []Step
	Clients    int
	Interval   time.Duration
	StaleAfter time.Duration
}

// Errors is the number of client-visible errors over all steps.
func (r *Report) Errors() int {
	n := 0
	for _, s := range r.Steps {
		n += s.Errors
	}
	return n
}

// Step returns the step named name, or nil.
func (r *Report) Step(name string) *Step {
	for i := range r.Steps {
		if r.Steps[i].Name == name {
			return &r.Steps[i]
		}
	}
	return nil
}

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "\nFailover drill: %d clients sending GET /whoami through the gateway; heartbeats every %v, stale after %v.\n\n",
		r.Clients, r.Interval, r.StaleAfter)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "step\trequests\terrors\tfailover\tslowest\tswitches\tversions\t")
	total := Step{Name: "total"}
	for _, s := range r.Steps {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%d\t%s\t\n", s.Name, s.Requests, s.Errors, failover(s.Failover), ms(s.Slowest),
			s.Switches, versions(&s))
		total.Requests += s.Requests
		total.Errors += s.Errors
		total.Slowest = max(total.Slowest, s.Slowest)
		total.Switches += s.Switches
	}
	fmt.Fprintf(tw, "%s\t%d\t%d\t\t%s\t%d\t\t\n", total.Name, total.Requests, total.Errors, ms(total.Slowest), total.Switches)
	_ = tw.Flush()
	fmt.Fprintln(w)
	for _, s := range r.Steps {
		fmt.Fprintf(w, "%-9s %s\n", s.Name+":", s.What)
	}
	fmt.Fprintln(w, "failover: from the fault to the first request sent after it that another instance answered. slowest: the longest request of the step.")
	fmt.Fprintln(w, "switches: how often the version served to clients (X-Version) changed; versions: the versions served, in order.")
	for _, s := range r.Steps {
		if len(s.Samples) > 0 {
			fmt.Fprintf(w, "errors in %s: %s\n", s.Name, strings.Join(s.Samples, "; "))
		}
	}
	if r.Errors() == 0 {
		fmt.Fprintln(w, "No client saw an error.")
	}
	if err := r.versionsErr(); err != nil {
		fmt.Fprintf(w, "%v.\n", err)
	} else if d := r.Step("deploy"); d != nil {
		fmt.Fprintf(w, "Clients went from %s to %s once, and never back.\n", d.Versions[0], d.Versions[1])
	}
}

// versionsErr says how the version served to clients misbehaved: a switch
// in a step other than the deploy, or a deploy that did not switch
// exactly once. Nil without a deploy step.
func (r *Report) versionsErr() error {
	d := r.Step("deploy")
	if d == nil {
		return nil
	}
	for _, s := range r.Steps {
		if s.Name != "deploy" && s.Switches != 0 {
			return fmt.Errorf("%w: %d in %s, which keeps the version (%s)", ErrVersionSwitches, s.Switches, s.Name, versions(&s))
		}
	}
	if d.Switches != 1 || len(d.Versions) != 2 {
		return fmt.Errorf("%w: %d in deploy, want exactly 1 (%s)", ErrVersionSwitches, d.Switches, versions(d))
	}
	return nil
}

// versions shows the versions a step served, in order: of many, the
// first two and the latest.
func versions(s *Step) string {
	v := s.Versions
	if len(v) > 3 {
		return strings.Join(v[:2], " → ") + " → … → " + v[len(v)-1]
	}
	return strings.Join(v, " → ")
}

func failover(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return ms(d)
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(time.Millisecond).String()
}
