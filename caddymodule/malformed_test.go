package caddymodule

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

func TestMalformedHeartbeatsAreRejectedAndNeverRouted(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tallow_networks 127.0.0.0/8\n\t\tstale_after 10s\n\t}\n}")
	nc := connect(t, natsURL)
	good := startBackend(t, "good")
	newInstance(t, nc, "good", good.url, 5).beat(heartbeat.StateReady)
	servedBy(t, base, "good", time.Second)

	evil := startBackend(t, "evil")
	valid := func(id, url string) []byte {
		m := heartbeat.Message{Proto: 1, ID: id, URL: url, State: heartbeat.StateReady,
			StartedAt: time.Now().UTC(), Seq: 1, IntervalMS: 1000}
		b, _ := heartbeat.Encode(&m)
		return b
	}
	bad := []struct{ subject, payload string }{
		{"cx.ha.hb.evil", `{"proto":1,"id":"evil",`},
		{"cx.ha.hb.other", string(valid("evil", evil.url))},
		{"cx.ha.hb.evil", string(valid("evil", evil.url+"/admin"))},
		{"cx.ha.hb.evil", strings.Replace(string(valid("evil", evil.url)), `"state"`, `"padding":"`+strings.Repeat("x", 10<<10)+`","state"`, 1)},
		{"cx.ha.hb.evil", string(valid("evil", "http://192.0.2.1:80"))},
		// (A DNS name is no longer refused here: allow_networks applies to
		// its resolved address when dialing.) An https url behind a
		// cx_proxy without tls would be sent in clear.
		{"cx.ha.hb.evil", string(valid("evil", strings.Replace(evil.url, "http://", "https://", 1)))},
	}
	raw := newInstance(t, nc, "evil", evil.url, 0)
	for _, b := range bad {
		raw.raw(b.subject, []byte(b.payload))
	}
	// A valid heartbeat published after the bad ones proves they were all
	// processed (one subscription delivers in order).
	marker := startBackend(t, "marker")
	newInstance(t, nc, "marker", marker.url, 9).beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return stateOf(t, "marker") == "active" }, "the marker instance")

	for _, m := range serviceOf(t, heartbeat.DefaultPrefix).reg.Members() {
		if m.ID == "evil" || m.ID == "other" {
			t.Fatalf("a rejected heartbeat created member %+v", m)
		}
	}
	for range 20 {
		if id, code := get(t, "GET", base); code != http.StatusOK || id != "good" {
			t.Fatalf("status %d from %q; the healthy instance must keep serving", code, id)
		}
	}
	if evil.count("GET") != 0 {
		t.Fatal("a rejected instance got traffic")
	}
}

func TestInstanceURLPointingAtTheGatewayIsRefused(t *testing.T) {
	natsURL := startNATS(t)
	base := gateway(t, natsURL, steadySite)
	nc := connect(t, natsURL)
	good := startBackend(t, "good")
	newInstance(t, nc, "good", good.url, 5).beat(heartbeat.StateReady)
	servedBy(t, base, "good", time.Second)
	for i, url := range []string{base, strings.Replace(base, "127.0.0.1", "localhost", 1)} {
		newInstance(t, nc, fmt.Sprintf("loop%d", i), url, 0).beat(heartbeat.StateReady)
	}
	marker := startBackend(t, "marker")
	newInstance(t, nc, "marker", marker.url, 9).beat(heartbeat.StateReady)
	eventually(t, time.Second, func() bool { return stateOf(t, "marker") == "active" }, "the marker instance")
	for _, m := range serviceOf(t, heartbeat.DefaultPrefix).reg.Members() {
		if strings.HasPrefix(m.ID, "loop") {
			t.Fatalf("an instance pointing at the gateway itself was admitted: %+v", m)
		}
	}
	if id, code := get(t, "GET", base); code != http.StatusOK || id != "good" {
		t.Fatalf("status %d from %q", code, id)
	}
}
