package membership

import "time"

// Route is what the request path needs of one active instance.
type Route struct {
	ID       string
	Dial     string
	Priority int
	Version  string
	// ActiveSince is when the instance was last put into routing (for
	// slow start and failback delay).
	ActiveSince time.Time
}

// Snapshot is the immutable routing view: the active members ordered by
// priority, then started_at, then id. It is replaced, never changed.
type Snapshot struct {
	// Routes are the active members, best first.
	Routes []Route
	// Tiers holds the end index (exclusive) in Routes of each run of equal
	// priority, best tier first.
	Tiers []int
	// Generation increases with every rebuild.
	Generation uint64
	// Version is the one version routed with Config.ConsistentVersions.
	Version string
}

// Tier returns the routes of tier i.
func (s *Snapshot) Tier(i int) []Route {
	start := 0
	if i > 0 {
		start = s.Tiers[i-1]
	}
	return s.Routes[start:s.Tiers[i]]
}

func buildSnapshot(ordered []*Member, generation uint64, version *string) *Snapshot {
	s := &Snapshot{Generation: generation}
	if version != nil {
		s.Version = *version
	}
	for _, m := range ordered {
		if !m.routable() || (version != nil && m.Version != *version) {
			continue
		}
		if n := len(s.Routes); n > 0 && s.Routes[n-1].Priority != m.Priority {
			s.Tiers = append(s.Tiers, n)
		}
		s.Routes = append(s.Routes, Route{ID: m.ID, Dial: m.Dial, Priority: m.Priority, Version: m.Version, ActiveSince: m.ActiveSince})
	}
	if len(s.Routes) > 0 {
		s.Tiers = append(s.Tiers, len(s.Routes))
	}
	return s
}
