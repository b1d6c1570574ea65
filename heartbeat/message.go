// Package heartbeat implements version 1 of the caddy-cx heartbeat protocol
// (see PROTOCOL.md): the message instances publish, its validation, the
// subjects it travels on, and a Publisher for instances written in Go.
package heartbeat

import (
	"time"
)

// Proto is the protocol version this package speaks.
const Proto = 1

// Limits of protocol version 1.
const (
	MaxPayload     = 4096
	MaxIDLen       = 64
	MaxVersionLen  = 64
	MaxRoles       = 16
	MaxRoleLen     = 64
	MaxMetaEntries = 16
	MaxMetaKeyLen  = 64
	MaxMetaValLen  = 256
	MinIntervalMS  = 100
	MaxIntervalMS  = 60000
	MinPriority    = -1000
	MaxPriority    = 1000
	MaxSeq         = 1<<53 - 1
)

// State is what an instance says about itself.
type State string

// The states of protocol version 1. Any other value is invalid.
const (
	StateReady    State = "ready"
	StateDraining State = "draining"
	StateLeaving  State = "leaving"
)

// Valid reports whether s is one of the states of protocol version 1.
func (s State) Valid() bool {
	return s == StateReady || s == StateDraining || s == StateLeaving
}

// Message is one heartbeat, as published on PREFIX.hb.ID.
type Message struct {
	Proto       int               `json:"proto"`
	ID          string            `json:"id"`
	URL         string            `json:"url"`
	State       State             `json:"state"`
	StartedAt   time.Time         `json:"started_at"`
	Seq         int64             `json:"seq"`
	IntervalMS  int               `json:"interval_ms"`
	Version     string            `json:"version,omitempty"`
	Priority    int               `json:"priority"`
	LeaderRoles []string          `json:"leader_roles,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
}

// Interval is IntervalMS as a duration.
func (m *Message) Interval() time.Duration {
	return time.Duration(m.IntervalMS) * time.Millisecond
}
