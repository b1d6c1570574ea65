package membership

import (
	"testing"
	"time"
)

func TestLeaderRoleConflicts(t *testing.T) {
	r, rec := newReg(t, Config{})
	r.Apply(beat("a", 1, withRoles("email-dispatcher")), at(0))
	r.Apply(beat("b", 1, withURL("http://10.0.0.2:8080")), at(0))
	if c := r.RoleConflicts(); len(c) != 0 {
		t.Fatalf("conflicts %+v with one holder", c)
	}
	rec.take()
	// b claims the role too; it does not change routing, yet is noticed.
	r.Apply(beat("b", 2, withURL("http://10.0.0.2:8080"), withRoles("email-dispatcher")), at(time.Second))
	c := r.RoleConflicts()
	if len(c) != 1 || c[0].Role != "email-dispatcher" || len(c[0].IDs) != 2 {
		t.Fatalf("conflicts %+v", c)
	}
	mustKinds(t, rec, EventRoleConflict)
	r.Apply(beat("a", 2, leaving()), at(2*time.Second))
	if c := r.RoleConflicts(); len(c) != 0 {
		t.Fatalf("conflict %+v should end when one holder leaves", c)
	}
	mustKinds(t, rec, EventLeave, EventRoleResolved)
}
