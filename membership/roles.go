package membership

import (
	"slices"
	"strings"
	"time"
)

// RoleConflict is a leader role claimed by more than one active instance:
// split brain in the application's background work.
type RoleConflict struct {
	Role  string
	IDs   []string
	Since time.Time
}

// RoleConflicts returns the current leader-role conflicts, by role.
func (r *Registry) RoleConflicts() []RoleConflict {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]RoleConflict, 0, len(r.roles))
	for _, c := range r.roles {
		out = append(out, RoleConflict{Role: c.Role, IDs: slices.Clone(c.IDs), Since: c.Since})
	}
	slices.SortFunc(out, func(a, b RoleConflict) int { return strings.Compare(a.Role, b.Role) })
	return out
}

// checkRoles recomputes the role conflicts among active members and
// reports those that start or end. The lock must be held.
func (r *Registry) checkRoles(sorted []*Member) {
	claims := map[string][]string{}
	for _, m := range sorted {
		if m.State != StateActive {
			continue
		}
		for _, role := range m.LeaderRoles {
			claims[role] = append(claims[role], m.ID)
		}
	}
	now := time.Now()
	for role, ids := range claims {
		if len(ids) < 2 {
			continue
		}
		if c, ok := r.roles[role]; ok {
			c.IDs = ids
			continue
		}
		if r.roles == nil {
			r.roles = map[string]*RoleConflict{}
		}
		r.roles[role] = &RoleConflict{Role: role, IDs: ids, Since: now}
		r.queue(Event{Kind: EventRoleConflict, ID: strings.Join(ids, ","),
			Detail: "leader role " + role + " is claimed by " + strings.Join(ids, " and ")})
	}
	for role := range r.roles {
		if len(claims[role]) < 2 {
			delete(r.roles, role)
			r.queue(Event{Kind: EventRoleResolved, Detail: "leader role " + role + " has one holder again"})
		}
	}
}
