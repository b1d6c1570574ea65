package caddymodule

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"

	"github.com/caddy-cx/caddy-cx/membership"
)

// controlState follows the fleet's control bucket for one service.
type controlState struct{}

// startControl starts following the control bucket on nc.
func (s *Service) startControl(nc *nats.Conn) {}

// stopControl stops following it.
func (s *Service) stopControl() {}

// ControlStatus is an instance's control entry in a status report.
type ControlStatus struct {
	State string `json:"state"`
}

// setControl writes id's control entry for the fleet and applies it here.
func (s *Service) setControl(ctx context.Context, id string, state membership.ControlState, by string) (membership.Control, error) {
	return membership.Control{}, errors.New("not implemented")
}

// controlStatus is m's control entry for a status report, if one holds.
func controlStatus(m membership.Member) *ControlStatus { return nil }
