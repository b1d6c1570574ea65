package grafana

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/caddy-cx/caddy-cx/internal/obscheck"
)

func TestDashboardFileIsGenerated(t *testing.T) {
	want, err := JSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("caddy-cx.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("caddy-cx.json is not what dashboard.go generates: run `go generate ./deploy/grafana`")
	}
}

// TestDashboardIsValid checks what Grafana needs to import the file and
// draw every panel: unique ids, panels inside the 24-column grid without
// overlapping, a data source everywhere, and queries that name metrics
// and labels of the contract.
func TestDashboardIsValid(t *testing.T) {
	data, err := os.ReadFile("caddy-cx.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID           string `json:"uid"`
		Title         string `json:"title"`
		SchemaVersion int    `json:"schemaVersion"`
		Panels        []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type, UID string
			} `json:"datasource"`
			GridPos struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				RefID      string `json:"refId"`
				Expr       string `json:"expr"`
				Datasource *struct {
					Type, UID string
				} `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name, Type string
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.UID != UID || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("uid %q title %q schemaVersion %d", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["service"] != "query" || vars["gateway"] != "query" {
		t.Errorf("template variables %v, want datasource, service and gateway", vars)
	}

	ids := map[int]bool{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID <= 0 {
			t.Errorf("panel %q: id %d not unique and positive", p.Title, p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 || g.Y < 0 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Errorf("panel %q overlaps %q at %d,%d", p.Title, other, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: no ${datasource} or no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] || tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: target %q has no unique refId or no ${datasource}", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
		}
	}

	queries, err := obscheck.DashboardQueries(data)
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	used := map[string]bool{}
	for _, q := range queries {
		problems = append(problems, obscheck.Check(q, obscheck.SpecLabels())...)
		e, _ := obscheck.ParseExpr(q.Expr)
		for _, m := range e.Metrics() {
			used[m] = true
		}
		if !strings.Contains(q.Where, "variable") && !strings.Contains(q.Expr, `$service`) && !strings.Contains(q.Expr, "$gateway") {
			problems = append(problems, q.Where+": not filtered by $service or $gateway")
		}
	}
	for name := range obscheck.Families {
		if !used[name] {
			problems = append(problems, "no panel shows "+name)
		}
	}
	if len(problems) > 0 {
		t.Errorf("dashboard queries against the metric contract:\n%s", strings.Join(problems, "\n"))
	}
}
