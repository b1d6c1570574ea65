package announce

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// checker tells whether the application is healthy: its health URL
// answers 2xx, or without one, its url accepts TCP connections.
type checker struct {
	health  string
	dial    string
	timeout time.Duration
	client  *http.Client
}

func newChecker(c *Config) *checker {
	return &checker{
		health:  c.Health,
		dial:    heartbeat.HostPort(c.URL),
		timeout: c.HealthTimeout,
		client: &http.Client{
			// One check, one connection: a health endpoint that stops
			// accepting connections must fail the next check.
			Transport: &http.Transport{DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
}

// check returns nil when healthy, else why not.
func (h *checker) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	if h.health == "" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", h.dial)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.health, nil)
	if err != nil {
		return err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s", h.health, resp.Status)
	}
	return nil
}

// watch checks every interval, starting now, and sends each result on
// out until ctx is done. A result is sent only after the previous one was
// taken, so a check never runs ahead of the handling of the last one.
func (h *checker) watch(ctx context.Context, interval time.Duration, out chan<- error) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case out <- h.check(ctx):
		case <-ctx.Done():
			return
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}
