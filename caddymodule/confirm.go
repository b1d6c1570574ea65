package caddymodule

import (
	"net/http"
	"strings"
	"time"
)

// ConfirmTimeout bounds one confirmation probe.
const ConfirmTimeout = time.Second

// confirmProbe returns a probe that GETs an instance's url + path and
// reports whether it answered 2xx. It dials through the same guard as
// proxied requests (policy: allow_networks, the gateway's own listeners)
// and follows no redirect: a 3xx, which could point anywhere, is not a
// confirmation.
func confirmProbe(path string, policy func() dialPolicy) func(url string) bool {
	client := &http.Client{
		Timeout: ConfirmTimeout,
		Transport: &http.Transport{
			DialContext:       guardedDialer(policy, ConfirmTimeout).DialContext,
			DisableKeepAlives: true, // probes are rare; keep no connection to a silent instance
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return func(url string) bool {
		resp, err := client.Get(strings.TrimSuffix(url, "/") + path)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 300
	}
}
