package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/natstest"
	"github.com/caddy-cx/caddy-cx/membership"
)

// TestGatewayUserControlBucket runs the real gateway as the gateway user of
// deploy/nats/permissions.conf on a JetStream server: it creates, writes
// and watches the control bucket through the admin API with exactly those
// permissions; the application's user and an instance's user can neither
// write the bucket nor reach its stream.
func TestGatewayUserControlBucket(t *testing.T) {
	setStaticPasswords(t)
	opts, err := server.ProcessConfigFile("nats/permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.Port, opts.HTTPPort = -1, 0
	opts.JetStream, opts.StoreDir = true, t.TempDir()
	s := natstest.Start(t, opts)

	admin := freeLoopback(t)
	site := freeLoopback(t)
	caddyfile := fmt.Sprintf(`{
	admin %s
	persist_config off
	cx {
		nats %s
		user gateway {env.CX_GATEWAY_PASSWORD}
		gateway_id gw-test
	}
}
http://%s {
	cx_proxy
}
`, admin, s.ClientURL(), site)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	gateway := connectAs(t, s, "gateway", "gateway-pw")
	app1 := connectAs(t, s, "app1", "app1-pw")
	pub, err := heartbeat.NewPublisher(app1.Conn, heartbeat.Config{ID: "app1", URL: "http://" + freeLoopback(t), Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Stop)

	// the gateway creates the bucket and follows it with the gateway
	// user's permissions: a maintenance written through the admin API
	// answers 200 with a revision.
	var code int
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body = postRaw(t, "http://"+admin+"/cx/instances/app1/maintenance")
		if code == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code != http.StatusOK || !strings.Contains(body, `"revision":`) || !strings.Contains(body, `"gateway":"gw-test"`) {
		t.Fatalf("maintenance through the admin API as the gateway user: %d %s", code, body)
	}
	// another gateway (same user) writes; this gateway's watcher applies it.
	js, err := jetstream.New(gateway.Conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "cx_control")
	if err != nil {
		t.Fatalf("the gateway user looking up the bucket: %v", err)
	}
	if _, err := kv.Get(ctx, "cx.ha.app1"); err != nil {
		t.Fatalf("the gateway user reading a key: %v", err)
	}
	if _, err := kv.Put(ctx, "cx.ha.app1", membership.Control{State: membership.ControlDrain, By: "other gateway", Gateway: "gw-other"}.Encode()); err != nil {
		t.Fatalf("the gateway user writing a key: %v", err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(getRaw(t, "http://"+admin+"/cx/instances"), `"by":"other gateway"`) {
		if time.Now().After(deadline) {
			t.Fatal("the gateway did not apply the other gateway's entry: its watcher is not allowed?")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-gateway.errs:
		t.Fatalf("the gateway user hit %v", err)
	default:
	}
	// no other bucket for the gateway user.
	gateway.refused(t, "a gateway", "$KV.other.x")
	gateway.refused(t, "a gateway", "$JS.API.STREAM.DELETE.KV_cx_control")

	// neither the application's user nor an instance's may touch it.
	app := connectAs(t, s, "app", "app-pw")
	for who, c := range map[string]*client{"the application's own user": app, "instance app1": app1} {
		c.refused(t, who, "$KV.cx_control.cx.ha.app2")
		c.refused(t, who, "$JS.API.STREAM.PURGE.KV_cx_control")
		c.refused(t, who, "$JS.API.STREAM.DELETE.KV_cx_control")
		c.refused(t, who, "$JS.API.CONSUMER.CREATE.KV_cx_control")
	}
	// the application keeps its own JetStream.
	appJS, err := jetstream.New(app.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := appJS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "app_cache"}); err != nil {
		t.Errorf("the application creating its own bucket: %v", err)
	}
}

func postRaw(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func getRaw(t *testing.T, url string) string {
	t.Helper()
	_, body := get(t, url)
	return body
}
