package demo

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// Step is what the clients saw during one step of the drill.
type Step struct {
	// Name is short (baseline, kill, hang, roll); What says what happened.
	Name string
	What string
	// Requests and Errors count the requests that ended during the step;
	// an error is anything but a 200 from a demo instance.
	Requests int
	Errors   int
	// Failover is the time from the fault to the end of the first request
	// sent after it that another instance answered; -1 if the step had no
	// fault or none came.
	Failover time.Duration
	// Slowest is the longest request that ended during the step.
	Slowest time.Duration
	// Samples are the first few errors, for the report.
	Samples []string
	// Switches counts how often the version served to clients changed
	// during the step: a request sent after a response of the version
	// served so far had been received got another version. A request sent
	// before that and answered by the older version (its instance was
	// picked before the gateway switched) is no switch back.
	Switches int
	// Versions are the versions served during the step, in order: the one
	// served when it began and each one switched to; of many, the first
	// maxVersions-1 and the latest.
	Versions []string

	fault   time.Time
	faultID string
}

type result struct {
	start, end time.Time
	instance   string
	version    string
	err        error
}

// waiter is closed once a result it matches is recorded.
type waiter struct {
	match func(result) bool
	done  chan struct{}
}

// load keeps a few clients sending GET /whoami through the gateway and
// accounts each result to the step in progress when it ended.
type load struct {
	url    string
	client *http.Client

	mu      sync.Mutex
	steps   []*Step
	waiters []*waiter
	// served is the version clients are served, set by the first response
	// (since is zero until then); since is when the response that switched
	// clients to it ended: the gateway switched before.
	served string
	since  time.Time

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startLoad(siteURL string, clients int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{
		url:    siteURL + "/whoami",
		cancel: cancel,
		client: &http.Client{
			// Longer than any stale_after: a hung instance is the gateway's
			// problem, not the client's.
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: clients},
		},
	}
	l.begin("baseline", "all three instances up", "")
	for range clients {
		l.wg.Go(func() { l.client1(ctx) })
	}
	return l
}

func (l *load) client1(ctx context.Context) {
	for ctx.Err() == nil {
		start := time.Now()
		id, version, err := l.get(ctx)
		if ctx.Err() != nil {
			return
		}
		l.record(result{start: start, end: time.Now(), instance: id, version: version, err: err})
	}
}

// get sends one request and returns the instance and version that
// answered it.
func (l *load) get(ctx context.Context) (id, version string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.url, nil)
	if err != nil {
		return "", "", err
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return "", "", err
	}
	id, version = resp.Header.Get("X-Instance"), resp.Header.Get("X-Version")
	if resp.StatusCode != http.StatusOK || id == "" || string(body) != id {
		return "", "", fmt.Errorf("%s: %q", resp.Status, heartbeat.Truncate(string(body), 80))
	}
	return id, version, nil
}

// begin starts a new step; faultID names the instance the step harms
// (its fault time is set by fault).
func (l *load) begin(name, what, faultID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &Step{Name: name, What: what, Failover: -1, faultID: faultID}
	if !l.since.IsZero() {
		s.Versions = []string{l.served}
	}
	l.steps = append(l.steps, s)
}

// fault marks now as the moment the current step's fault happened.
func (l *load) fault() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.steps[len(l.steps)-1].fault = time.Now()
}

func (l *load) record(r result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.steps[len(l.steps)-1]
	s.Requests++
	s.Slowest = max(s.Slowest, r.end.Sub(r.start))
	if r.err != nil {
		s.Errors++
		if len(s.Samples) < 3 {
			s.Samples = append(s.Samples, r.err.Error())
		}
	} else {
		l.version(s, r)
		if !s.fault.IsZero() && s.Failover < 0 && r.instance != s.faultID && r.start.After(s.fault) {
			s.Failover = r.end.Sub(s.fault)
		}
	}
	kept := l.waiters[:0]
	for _, w := range l.waiters {
		if r.err == nil && w.match(r) {
			close(w.done)
		} else {
			kept = append(kept, w)
		}
	}
	l.waiters = kept
}

// maxVersions bounds Step.Versions.
const maxVersions = 8

// version accounts the version of a successful response to s. The lock
// must be held.
func (l *load) version(s *Step, r result) {
	switch {
	case l.since.IsZero():
		l.served, l.since = r.version, r.end
		s.Versions = append(s.Versions, r.version)
	case r.version == l.served:
	case r.start.After(l.since):
		// Sent after the served version had reached a client: whatever
		// the gateway picked for it, it picked after the last switch.
		s.Switches++
		l.served, l.since = r.version, r.end
		if len(s.Versions) < maxVersions {
			s.Versions = append(s.Versions, r.version)
		} else {
			s.Versions[maxVersions-1] = r.version
		}
	}
	// Otherwise it was sent before the last switch could be seen: an
	// answer of an older pick, not a switch back.
}

// servedBy returns a channel closed once a request that started after
// after is answered by an instance for which ok holds.
func (l *load) servedBy(after time.Time, ok func(id string) bool) <-chan struct{} {
	w := &waiter{done: make(chan struct{}), match: func(r result) bool {
		return r.start.After(after) && ok(r.instance)
	}}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.waiters = append(l.waiters, w)
	return w.done
}

// stop stops the clients and returns the steps.
func (l *load) stop() []Step {
	l.cancel()
	l.wg.Wait()
	l.client.CloseIdleConnections()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Step, len(l.steps))
	for i, s := range l.steps {
		out[i] = *s
	}
	return out
}
