package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Outcomes of one try of a request at one instance.
const (
	outcomeOK       = "ok"
	outcomeDial     = "dial_error"
	outcomeStale    = "stale"
	outcomeError    = "transport_error"
	outcomeStatus5x = "status_5xx"
)

// recordAttempt notes in the request's state how its try at instance id
// ended, so that the policy, if asked for another instance, can judge the
// try and say why it retries; and counts the try for the instance's
// metrics.
func (s *Service) recordAttempt(st *proxyRequest, dial, id string, resp *http.Response, err error) {
	st.ended(dial, id, outcomeOf(resp, err), statusOf(resp))
	if id != "" {
		s.countTry(id, resp, err)
	}
}

// statusOf is the status of resp, or 0 without a response.
func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

func outcomeOf(resp *http.Response, err error) string {
	if err == nil {
		if resp.StatusCode >= 500 {
			return outcomeStatus5x
		}
		return outcomeOK
	}
	return failureOf(err)
}

// failureOf is the outcome of a try that failed with err. It is apart
// from outcomeOf so that a try without error does not pay for errors.As's
// target, which escapes to the heap.
func failureOf(err error) string {
	var dialErr reverseproxy.DialError
	switch {
	case errors.Is(err, errInstanceStale):
		return outcomeStale
	case errors.As(err, &dialErr):
		return outcomeDial
	}
	return outcomeError
}
