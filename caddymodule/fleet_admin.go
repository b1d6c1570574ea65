package caddymodule

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// handleGateways serves GET /cx/gateways.
func handleGateways(w http.ResponseWriter, r *http.Request) error {
	return caddy.APIError{HTTPStatus: http.StatusNotImplemented, Err: errors.New("not implemented")}
}
