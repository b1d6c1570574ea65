package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

// controlAnswer is the answer to a control action: the entry as written,
// and the bucket revision it was written at.
type controlAnswer struct {
	Service  string    `json:"service"`
	ID       string    `json:"id"`
	State    string    `json:"state"`
	By       string    `json:"by"`
	Gateway  string    `json:"gateway"`
	At       time.Time `json:"at"`
	Revision uint64    `json:"revision"`
}

// controlError is a failed control action with the HTTP status it earns.
type controlError struct {
	status int
	err    error
}

func (e *controlError) Error() string { return e.err.Error() }

// controlActions maps an action's name to the state it sets.
var controlActions = map[string]membership.ControlState{
	"drain":       membership.ControlDrain,
	"maintenance": membership.ControlMaintenance,
	"ready":       membership.ControlReady,
}

// runControl sets id's state in the service of prefix (which may be empty
// when only one service runs), among services, on behalf of by.
func runControl(ctx context.Context, services []*Service, prefix, id, action, by string) (controlAnswer, *controlError) {
	state, ok := controlActions[action]
	if !ok {
		return controlAnswer{}, &controlError{http.StatusNotFound, fmt.Errorf("unknown action %q: use drain, maintenance or ready", action)}
	}
	if !heartbeat.ValidID(id) {
		return controlAnswer{}, &controlError{http.StatusBadRequest, fmt.Errorf("instance id %q: an id is 1 to %d characters of A-Z a-z 0-9 _ -", truncateID(id), heartbeat.MaxIDLen)}
	}
	s, cerr := pickService(services, prefix)
	if cerr != nil {
		return controlAnswer{}, cerr
	}
	ctl, rev, err := s.setControl(ctx, id, state, by)
	var unavailable errControlUnavailable
	switch {
	case errors.Is(err, errUnknownInstance):
		return controlAnswer{}, &controlError{http.StatusNotFound, fmt.Errorf("instance %q is not known to service %s: drain holds the process running now, so it needs one; "+
			"maintenance can be set for an id not seen yet", id, s.prefix)}
	case errors.As(err, &unavailable):
		return controlAnswer{}, &controlError{http.StatusServiceUnavailable, fmt.Errorf("service %s: %w", s.prefix, err)}
	case err != nil:
		return controlAnswer{}, &controlError{http.StatusInternalServerError, err}
	}
	return controlAnswer{Service: s.prefix, ID: id, State: string(ctl.State), By: ctl.By, Gateway: ctl.Gateway, At: ctl.At, Revision: rev}, nil
}

// pickService finds the service of prefix, or the only one running.
func pickService(services []*Service, prefix string) (*Service, *controlError) {
	names := make([]string, len(services))
	for i, s := range services {
		names[i] = s.prefix
		if prefix != "" && s.prefix == prefix {
			return s, nil
		}
	}
	switch {
	case len(services) == 0:
		return nil, &controlError{http.StatusServiceUnavailable, errors.New("no cx service is running: load a config with cx_proxy (or cx_upstreams) first")}
	case prefix != "":
		return nil, &controlError{http.StatusNotFound, fmt.Errorf("no running service has subject prefix %q; running: %s", truncateID(prefix), strings.Join(names, ", "))}
	case len(services) > 1:
		return nil, &controlError{http.StatusBadRequest, fmt.Errorf("this gateway serves several subject prefixes: add ?service=<prefix>, one of %s", strings.Join(names, ", "))}
	}
	return services[0], nil
}

// truncateID bounds what a request sent before it is repeated in an
// error.
func truncateID(s string) string { return heartbeat.Truncate(s, 2*heartbeat.MaxIDLen) }

// handleControl serves POST /cx/instances/<id>/drain|maintenance|ready
// [?service=<prefix>]: it writes the instance's entry in the control
// bucket, which every gateway follows, and applies it here before it
// answers, so that no request is routed here against it afterwards.
func handleControl(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, "/cx/instances/")
	id, action, ok := strings.Cut(rest, "/")
	if !ok || id == "" || strings.Contains(action, "/") {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("%s: use POST /cx/instances/<id>/drain, /maintenance or /ready", truncateID(r.URL.Path))}
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use POST", r.Method)}
	}
	ans, cerr := runControl(r.Context(), runningServices(), r.URL.Query().Get("service"), id, action, "admin API")
	if cerr != nil {
		return caddy.APIError{HTTPStatus: cerr.status, Err: cerr.err}
	}
	return writeControlAnswer(w, ans)
}

func writeControlAnswer(w http.ResponseWriter, ans controlAnswer) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	return json.NewEncoder(w).Encode(ans)
}
