package membership

import (
	"testing"
	"time"
)

func TestConsistentVersionsSwitchOnceDuringRollingDeploy(t *testing.T) {
	r, rec := newReg(t, Config{ConsistentVersions: true})
	ids := []string{"a", "b", "c"}
	seq := map[string]int64{}
	send := func(id, version string, mods ...mod) {
		seq[id]++
		r.Apply(beat(id, seq[id], append(mods, withVersion(version))...), at(time.Duration(len(seq))*time.Second))
	}
	for _, id := range ids {
		send(id, "2026.9.1")
	}
	served := []string{r.Snapshot().Version}
	observe := func() {
		if v := r.Snapshot().Version; v != served[len(served)-1] {
			served = append(served, v)
		}
		for _, route := range r.Snapshot().Routes {
			if route.Version != r.Snapshot().Version {
				t.Fatalf("route %+v does not have the served version %s", route, r.Snapshot().Version)
			}
		}
	}
	// Roll: each instance leaves and comes back with the new version.
	for i, id := range ids {
		send(id, "2026.9.1", leaving())
		observe()
		seq[id] = 0
		r.Apply(beat(id, 1, withVersion("2026.10.0"), started(time.Duration(i+1)*time.Hour)), at(time.Hour))
		seq[id] = 1
		observe()
	}
	if len(served) != 2 || served[0] != "2026.9.1" || served[1] != "2026.10.0" {
		t.Fatalf("served versions %v, want one switch from 2026.9.1 to 2026.10.0", served)
	}
	switches := 0
	for _, ev := range rec.take() {
		if ev.Kind == EventVersionSwitch {
			switches++
		}
	}
	if switches != 1 {
		t.Fatalf("%d version_switch events, want 1", switches)
	}
}

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"2026.10.0", "2026.9.1", 1},
		{"1.2", "1.2", 0},
		{"1.2", "1.2.1", -1},
		{"v2", "v10", -1},
		{"abc", "abd", -1},
		{"", "1", -1},
	}
	for _, c := range cases {
		if got := compareVersions(c.a, c.b); got != c.want {
			t.Errorf("compare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
