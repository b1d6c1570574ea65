package caddymodule

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-cx/caddy-cx/membership"
)

// TestFleetEventsLogged: joins and leaves at info, refusals as warnings
// rate-limited per kind and reason, so that a flood cannot fill the log.
func TestFleetEventsLogged(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	s := &Service{log: newEventLog(zap.New(core))}
	s.logFleetEvent(membership.FleetEvent{Kind: membership.FleetJoin, Gateway: "gw-b"})
	s.logFleetEvent(membership.FleetEvent{Kind: membership.FleetLeave, Gateway: "gw-b"})
	for range 1000 {
		s.logFleetEvent(membership.FleetEvent{Kind: membership.FleetIgnored, Gateway: "evil", Reason: "unannounced", Detail: "x"})
		s.logFleetEvent(membership.FleetEvent{Kind: membership.FleetConflict, Gateway: "gw-a", Detail: "two processes"})
	}
	if got := logs.FilterLevelExact(zapcore.InfoLevel).Len(); got != 2 {
		t.Errorf("%d info lines, want join and leave", got)
	}
	warn := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warn) != 2 || warn[0].Message != "gateway observation ignored" || warn[1].Message != "gateway id conflict" {
		t.Errorf("warnings: %+v", warn)
	}
}
