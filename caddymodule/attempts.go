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

// recordAttempt notes how one try of req at instance id ended, so that a
// retry that follows can say why, and counts it for the instance's metrics.
func (s *Service) recordAttempt(req *http.Request, id string, resp *http.Response, err error) {
	triedOf(req).lastOutcome = outcomeOf(resp, err)
	if id != "" {
		s.countTry(id, resp, err)
	}
}

func outcomeOf(resp *http.Response, err error) string {
	var dialErr reverseproxy.DialError
	switch {
	case errors.Is(err, errInstanceStale):
		return outcomeStale
	case errors.As(err, &dialErr):
		return outcomeDial
	case err != nil:
		return outcomeError
	case resp.StatusCode >= 500:
		return outcomeStatus5x
	}
	return outcomeOK
}
