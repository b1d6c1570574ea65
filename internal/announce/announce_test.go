package announce

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/membership"
)

func config(t *testing.T, natsURL, health string) *Config {
	t.Helper()
	args := []string{"--nats", natsURL, "--id", "app1", "--url", "http://10.0.0.11:8080",
		"--interval", "100ms", "--version", "2026.4.1", "--priority", "3"}
	if health != "" {
		args = append(args, "--health", health)
	}
	c, err := Parse(args, func(string) string { return "" }, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestHealthUpAndDown follows one sidecar through its life: silent while
// the application is unhealthy, announcing while healthy, paused while
// unhealthy again (the gateway turns it stale), back as the same process
// (ready, not a restart), drained and readied by signal, and leaving on
// SIGTERM.
func TestHealthUpAndDown(t *testing.T) {
	s := startNATS(t, nil)
	health := startHealth(t, false)
	hb := listen(t, s.ClientURL(), "app1")
	events := watch(t, s.ClientURL())
	r := run(t, config(t, s.ClientURL(), health.URL))

	health.await(t, 503, 2)
	upAt := time.Now()
	health.up.Store(true)
	first := hb.next(t, "first heartbeat", anyBeat)
	if first.Seq != 1 || first.State != heartbeat.StateReady || first.StartedAt.Before(upAt) {
		t.Fatalf("first heartbeat %+v: want seq 1, ready, started after the application turned healthy (%v)", first, upAt)
	}
	if first.URL != "http://10.0.0.11:8080" || first.Version != "2026.4.1" || first.Priority != 3 || first.IntervalMS != 100 {
		t.Errorf("announced fields: %+v", first)
	}
	events.await(t, membership.EventJoin)

	// Unhealthy: paused, stale at the gateway; healthy again: the same
	// process resumes at the next seq and is routed again.
	health.up.Store(false)
	events.await(t, membership.EventStale)
	paused := hb.last(t)
	health.up.Store(true)
	again := hb.next(t, "heartbeat after recovery", anyBeat)
	if again.Seq != paused.Seq+1 || !again.StartedAt.Equal(first.StartedAt) || again.State != heartbeat.StateReady {
		t.Errorf("after recovery: %+v, want seq %d, started_at %v, ready (the same process resumed)", again, paused.Seq+1, first.StartedAt)
	}
	events.await(t, membership.EventReady)
	events.member(t, membership.StateActive, first.StartedAt)

	r.sig <- DrainSignal
	hb.next(t, "draining", func(m *heartbeat.Message) bool { return m.State == heartbeat.StateDraining })
	events.await(t, membership.EventDraining)

	// Draining survives a health outage, and signals while paused are
	// kept for the heartbeat of the recovery, which resumes the seq.
	health.up.Store(false)
	events.await(t, membership.EventStale)
	r.sig <- ReadySignal
	r.sig <- DrainSignal
	paused = hb.last(t)
	if paused.State != heartbeat.StateDraining {
		t.Errorf("last heartbeat before the pause %+v, want draining", paused)
	}
	health.up.Store(true)
	m := hb.next(t, "heartbeat after the second recovery", anyBeat)
	if m.Seq != paused.Seq+1 || !m.StartedAt.Equal(first.StartedAt) || m.State != heartbeat.StateDraining {
		t.Errorf("after an outage while draining: %+v, want seq %d, started_at %v, draining", m, paused.Seq+1, first.StartedAt)
	}
	events.await(t, membership.EventDraining)
	events.member(t, membership.StateDraining, first.StartedAt)

	r.sig <- ReadySignal
	hb.next(t, "ready again", func(m *heartbeat.Message) bool { return m.State == heartbeat.StateReady })
	events.await(t, membership.EventReady)

	r.stop(t, syscall.SIGTERM)
	last := hb.next(t, "leaving", func(m *heartbeat.Message) bool { return m.State == heartbeat.StateLeaving })
	if !last.StartedAt.Equal(first.StartedAt) {
		t.Errorf("leaving from started_at %v, want %v", last.StartedAt, first.StartedAt)
	}
	events.await(t, membership.EventLeave)
}

// TestLeaveWhileUnhealthy: SIGTERM while heartbeats are paused still
// announces leaving, so the gateway lists the instance as left at once.
func TestLeaveWhileUnhealthy(t *testing.T) {
	s := startNATS(t, nil)
	health := startHealth(t, true)
	hb := listen(t, s.ClientURL(), "app1")
	events := watch(t, s.ClientURL())
	r := run(t, config(t, s.ClientURL(), health.URL))
	first := hb.next(t, "first heartbeat", anyBeat)
	events.await(t, membership.EventJoin)
	health.up.Store(false)
	events.await(t, membership.EventStale)
	paused := hb.last(t)
	r.stop(t, syscall.SIGTERM)
	m := hb.next(t, "leaving", anyBeat)
	if m.State != heartbeat.StateLeaving || m.Seq != paused.Seq+1 || !m.StartedAt.Equal(first.StartedAt) {
		t.Errorf("leaving while paused: %+v, want leaving, seq %d", m, paused.Seq+1)
	}
	events.await(t, membership.EventLeave)
}

// TestTCPCheck: without --health, the check is a TCP connect to --url.
func TestTCPCheck(t *testing.T) {
	s := startNATS(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hb := listen(t, s.ClientURL(), "app1")
	events := watch(t, s.ClientURL())
	c := config(t, s.ClientURL(), "")
	c.URL = "http://" + ln.Addr().String()
	r := run(t, c)
	if m := hb.next(t, "first heartbeat", anyBeat); m.URL != c.URL {
		t.Errorf("url %s, want %s", m.URL, c.URL)
	}
	ln.Close()
	events.await(t, membership.EventStale)
	r.stop(t, os.Interrupt)
}

// TestAuth connects with each kind of credentials the gateway takes.
func TestAuth(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		server server.Options
		client nats.Option
		auth   heartbeat.Auth
	}{
		{"token", server.Options{Authorization: "s3cret"}, nats.Token("s3cret"), heartbeat.Auth{Token: "s3cret"}},
		{"user", server.Options{Username: "app", Password: "pw"}, nats.UserInfo("app", "pw"), heartbeat.Auth{User: "app", Password: "pw"}},
		{"nkey", server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}}, nats.Nkey(pub, kp.Sign), heartbeat.Auth{NKey: seedFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startNATS(t, &tt.server)
			hb := listen(t, s.ClientURL(), "app1", tt.client)
			health := startHealth(t, true)
			c := config(t, s.ClientURL(), health.URL)
			c.Auth = tt.auth
			r := run(t, c)
			hb.next(t, "heartbeat with "+tt.name+" auth", anyBeat)
			r.stop(t, syscall.SIGTERM)
		})
	}
}

// events collects the membership events a gateway would see, from a
// real registry fed by a real watcher.
type events struct {
	ch  chan membership.Event
	reg *membership.Registry
}

func watch(t *testing.T, url string) *events {
	t.Helper()
	e := &events{ch: make(chan membership.Event, 1024)}
	reg, err := membership.New(membership.Config{OnEvent: func(ev membership.Event) { e.ch <- ev }})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e.reg = reg
	w := membership.NewWatcher(nc, reg)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *events) await(t *testing.T, kind membership.EventKind) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev := <-e.ch:
			if ev.Kind == membership.EventRejected {
				t.Fatalf("heartbeat rejected: %s", ev.Detail)
			}
			if ev.Kind != kind && (ev.Kind == membership.EventRestart || ev.Kind == membership.EventConflict) {
				// The sidecar announces one process for its whole life.
				t.Fatalf("%s event while awaiting %s: %+v", ev.Kind, kind, ev)
			}
			if ev.Kind == kind {
				return
			}
		case <-deadline:
			t.Fatalf("no %s event", kind)
		}
	}
}

// member checks that the registry lists app1 in state with startedAt.
func (e *events) member(t *testing.T, state membership.State, startedAt time.Time) {
	t.Helper()
	for _, m := range e.reg.Members() {
		if m.ID == "app1" {
			if m.State != state || !m.StartedAt.Equal(startedAt) {
				t.Errorf("registry lists app1 %s started at %v, want %s started at %v", m.State, m.StartedAt, state, startedAt)
			}
			return
		}
	}
	t.Errorf("registry does not list app1")
}

func TestParse(t *testing.T) {
	env := map[string]string{"CX_NATS": "nats://nats:4222", "CX_ID": "app2", "CX_URL": "http://app2:8080",
		"CX_INTERVAL": "2s", "CX_PRIORITY": "1", "CX_HEALTH": "http://app2:8080/health", "CX_TOKEN": "t"}
	c, err := Parse([]string{"--id", "app1", "--priority", "0"}, func(k string) string { return env[k] }, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "app1" || c.Priority != 0 || c.NATS != "nats://nats:4222" || c.Interval != 2*time.Second ||
		c.HealthTimeout != 2*time.Second || c.Auth.Token != "t" || c.Health != "http://app2:8080/health" || c.Prefix != "cx.ha" {
		t.Errorf("flags over environment: %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	base := []string{"--nats", "nats://127.0.0.1:4222", "--id", "app1", "--url", "http://127.0.0.1:8080"}
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--id", "app1", "--url", "http://h:1"}, nil, "--nats is required (or CX_NATS)"},
		{[]string{"--nats", "nats://h:4222", "--url", "http://h:1"}, nil, "--id is required"},
		{[]string{"--nats", "nats://h:4222", "--id", "a"}, nil, "--url is required"},
		{append(base, "--id", "app.1"), nil, `--id "app.1"`},
		{append(base, "--url", "http://h"), nil, "--url: \"http://h\" needs an explicit port"},
		{append(base, "--url", "http://h:1/app"), nil, "--url: \"http://h:1/app\" has a path"},
		{append(base, "--nats", "http://h:4222"), nil, "scheme must be nats, tls, ws or wss"},
		{append(base, "--interval", "50ms"), nil, "--interval 50ms: use 100ms to 60s"},
		{append(base, "--interval", "soon"), nil, `invalid argument "soon" for "--interval" flag`},
		{append(base, "--priority", "5000"), nil, "--priority 5000"},
		{append(base, "--health", "/health"), nil, "--health \"/health\" is not an http(s) URL"},
		{append(base, "--prefix", "cx.*"), nil, "--prefix"},
		{append(base, "--token", "t", "--user", "u", "--password", "p"), nil, "choose one of"},
		{append(base, "--user", "u"), nil, "--user needs --password"},
		{append(base, "--tls-cert", "c.pem"), nil, "--tls-cert and --tls-key go together"},
		{append(base, "extra"), nil, `unexpected argument "extra"`},
		{append(base, "--bogus"), nil, "unknown flag: --bogus"},
		{base, map[string]string{"CX_INTERVAL": "1 second"}, `CX_INTERVAL="1 second" is not a duration`},
		{base, map[string]string{"CX_PRIORITY": "high"}, `CX_PRIORITY="high" is not a whole number`},
		{append(base, "--version", strings.Repeat("v", 65)), nil, "--version: 65 characters"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.args, func(k string) string { return tt.env[k] }, &strings.Builder{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q, %v): error %v, want one containing %q", tt.args, tt.env, err, tt.want)
		}
	}
}
