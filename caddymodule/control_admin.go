package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// handleControl serves POST /cx/instances/<id>/drain|maintenance|ready.
func handleControl(w http.ResponseWriter, r *http.Request) error {
	return caddy.APIError{HTTPStatus: http.StatusNotImplemented, Err: errors.New("not implemented")}
}
