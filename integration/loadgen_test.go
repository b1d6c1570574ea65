package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// result is what happened to one request of a load run.
type result struct {
	Seq       int
	Scheduled time.Time // when the schedule wanted it to start
	Start     time.Time // when it started
	Latency   time.Duration
	Status    int    // 0 if no response
	Err       error  // transport error or a bad body
	Instance  string // X-Instance of the response
	Process   string // X-Process of the response: the backend's pid
}

// End is when the response was complete.
func (r result) End() time.Time { return r.Start.Add(r.Latency) }

// OK reports a 200 response with the expected body.
func (r result) OK() bool { return r.Err == nil && r.Status == http.StatusOK }

func (r result) String() string {
	s := fmt.Sprintf("#%d at %s: %v, status %d, instance %q", r.Seq, r.Start.Format("15:04:05.000"), r.Latency.Round(time.Millisecond), r.Status, r.Instance)
	if r.Err != nil {
		s += ", error: " + r.Err.Error()
	}
	return s
}

// loadGen is an open-model load generator: requests start on a fixed
// schedule whether or not earlier ones have finished, as real clients do,
// so a stalled gateway shows up as latency and errors rather than as a
// lower request rate.
type loadGen struct {
	every  time.Duration
	newReq func(ctx context.Context) (*http.Request, error)
	check  func(resp *http.Response, body []byte) error
	client *http.Client

	ctx    context.Context
	cancel context.CancelFunc
	sched  sync.WaitGroup // the scheduler
	reqs   sync.WaitGroup // requests in flight

	mu      sync.Mutex
	results []result
	started int
}

// startLoad sends GET url every `every` until Stop; each response must
// be 200 with body `instance=<X-Instance>`.
func startLoad(t testing.TB, url string, every time.Duration) *loadGen {
	t.Helper()
	return startLoadWith(t, every, func(ctx context.Context) (*http.Request, error) {
		return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	}, checkInstanceBody)
}

// checkInstanceBody checks the body of a testbackend's GET /.
func checkInstanceBody(resp *http.Response, body []byte) error {
	if resp.StatusCode != http.StatusOK {
		return nil // the status tells
	}
	if want := "instance=" + resp.Header.Get("X-Instance"); string(body) != want {
		return fmt.Errorf("body %q, want %q", truncate(string(body), 100), want)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// startLoadWith starts a load of requests made by newReq every `every`;
// check (optional) judges each response. Stop is called when the test
// ends if the test does not call it.
func startLoadWith(t testing.TB, every time.Duration, newReq func(context.Context) (*http.Request, error),
	check func(*http.Response, []byte) error) *loadGen {
	ctx, cancel := context.WithCancel(context.Background())
	l := &loadGen{
		every:  every,
		newReq: newReq,
		check:  check,
		client: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				MaxIdleConns:        1000,
				MaxIdleConnsPerHost: 1000,
				IdleConnTimeout:     30 * time.Second,
				DisableCompression:  true,
			},
		},
		ctx:    ctx,
		cancel: cancel,
	}
	l.sched.Add(1)
	go l.schedule()
	t.Cleanup(func() { l.Stop() })
	return l
}

func (l *loadGen) schedule() {
	defer l.sched.Done()
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-l.ctx.Done():
			return
		case <-timer.C:
		}
		l.mu.Lock()
		l.started++
		l.mu.Unlock()
		l.reqs.Add(1)
		go l.do(seq, next)
		next = next.Add(l.every)
		timer.Reset(max(time.Until(next), 0))
	}
}

func (l *loadGen) do(seq int, scheduled time.Time) {
	defer l.reqs.Done()
	r := result{Seq: seq, Scheduled: scheduled, Start: time.Now()}
	// Requests in flight when the load stops still finish: they are not
	// tied to l.ctx.
	req, err := l.newReq(context.Background())
	if err == nil {
		var resp *http.Response
		resp, err = l.client.Do(req)
		if err == nil {
			var body []byte
			body, err = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			r.Status = resp.StatusCode
			r.Instance = resp.Header.Get("X-Instance")
			r.Process = resp.Header.Get("X-Process")
			if err == nil && l.check != nil {
				err = l.check(resp, body)
			}
		}
	}
	r.Latency = time.Since(r.Start)
	r.Err = err
	l.mu.Lock()
	l.results = append(l.results, r)
	l.mu.Unlock()
}

// Stop stops starting requests, waits for those in flight and returns
// every result in start order. It may be called more than once.
func (l *loadGen) Stop() results {
	l.cancel()
	l.sched.Wait()
	l.reqs.Wait()
	l.client.CloseIdleConnections()
	return l.Results()
}

// Results returns the results of the requests completed so far, in start
// order.
func (l *loadGen) Results() results {
	l.mu.Lock()
	rs := slices.Clone(l.results)
	l.mu.Unlock()
	sort.Slice(rs, func(i, j int) bool { return rs[i].Seq < rs[j].Seq })
	return rs
}

// Started is the number of requests started so far.
func (l *loadGen) Started() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.started
}

// waitServed waits until n requests completed since `since` were served
// (200) by instance id.
func (l *loadGen) waitServed(t testing.TB, timeout time.Duration, id string, n int, since time.Time) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d responses from %s", n, id), func() bool {
		return l.Results().Since(since).ByInstance()[id] >= n
	})
}

// results is a load run's results, with summaries.
type results []result

// Errors returns the requests that failed: a transport error, a bad body
// or a status other than 200.
func (rs results) Errors() results {
	var out results
	for _, r := range rs {
		if !r.OK() {
			out = append(out, r)
		}
	}
	return out
}

// ByInstance counts the successful responses per instance.
func (rs results) ByInstance() map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		if r.OK() {
			m[r.Instance]++
		}
	}
	return m
}

// Since returns the requests started at or after t.
func (rs results) Since(t time.Time) results {
	var out results
	for _, r := range rs {
		if !r.Start.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// Before returns the requests started before t.
func (rs results) Before(t time.Time) results {
	var out results
	for _, r := range rs {
		if r.Start.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// LastServed returns the successful response from instance id that
// completed last (ok false if there is none).
func (rs results) LastServed(id string) (last result, ok bool) {
	for _, r := range rs {
		if r.OK() && r.Instance == id && (!ok || r.End().After(last.End())) {
			last, ok = r, true
		}
	}
	return last, ok
}

// LastStartedServed returns the request served by id that started last.
func (rs results) LastStartedServed(id string) (last result, ok bool) {
	for _, r := range rs {
		if r.OK() && r.Instance == id && (!ok || r.Start.After(last.Start)) {
			last, ok = r, true
		}
	}
	return last, ok
}

// Latency returns the q-quantile (0..1) of the latencies.
func (rs results) Latency(q float64) time.Duration {
	if len(rs) == 0 {
		return 0
	}
	ls := make([]time.Duration, len(rs))
	for i, r := range rs {
		ls[i] = r.Latency
	}
	slices.Sort(ls)
	return ls[min(len(ls)-1, int(q*float64(len(ls))))]
}

// MaxLag is the largest delay between a request's scheduled and actual
// start: a large one means the test machine could not keep the rate.
func (rs results) MaxLag() time.Duration {
	var m time.Duration
	for _, r := range rs {
		m = max(m, r.Start.Sub(r.Scheduled))
	}
	return m
}

// Summary is a one-line description for logs.
func (rs results) Summary() string {
	by := rs.ByInstance()
	ids := make([]string, 0, len(by))
	for id, n := range by {
		ids = append(ids, fmt.Sprintf("%s=%d", id, n))
	}
	slices.Sort(ids)
	return fmt.Sprintf("%d requests, %d errors, served by %s, latency p50 %v p99 %v max %v, max start lag %v",
		len(rs), len(rs.Errors()), strings.Join(ids, " "), rs.Latency(0.5).Round(100*time.Microsecond),
		rs.Latency(0.99).Round(100*time.Microsecond), rs.Latency(1).Round(100*time.Microsecond),
		rs.MaxLag().Round(100*time.Microsecond))
}

// Describe lists up to n results, for failure messages.
func (rs results) Describe(n int) string {
	var b strings.Builder
	for i, r := range rs {
		if i == n {
			fmt.Fprintf(&b, "... and %d more\n", len(rs)-n)
			break
		}
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// TestLoadGenOpenModel checks the load generator itself against a local
// server: requests keep starting on schedule while earlier ones hang.
func TestLoadGenOpenModel(t *testing.T) {
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hang") == "1" {
			<-release
		}
		w.Header().Set("X-Instance", "local")
		_, _ = io.WriteString(w, "instance=local")
	})}
	ln := listenLocal(t)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	url := "http://" + ln.Addr().String() + "/?hang=1"
	l := startLoad(t, url, 5*time.Millisecond)
	waitFor(t, 5*time.Second, "40 requests started while none finished", func() bool { return l.Started() >= 40 })
	if n := len(l.Results()); n != 0 {
		t.Fatalf("%d requests finished while the server hung all of them", n)
	}
	close(release)
	rs := l.Stop()
	if len(rs) < 40 {
		t.Fatalf("got %d results, want at least 40", len(rs))
	}
	if errs := rs.Errors(); len(errs) > 0 {
		t.Fatalf("errors:\n%s", errs.Describe(5))
	}
	if got := rs.ByInstance()["local"]; got != len(rs) {
		t.Fatalf("served by local: %d of %d", got, len(rs))
	}
	t.Log(rs.Summary())
}
