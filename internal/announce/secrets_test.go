package announce

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// syncBuffer is a log sink that tests read while Run writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestSecretsNotLogged: the NATS url's user info (a password, or a token
// in the user position) never reaches the sidecar's log, whether the
// connection is refused (wrong password: the url is logged with the
// warning) or accepted (the connected server is logged).
func TestSecretsNotLogged(t *testing.T) {
	tests := []struct {
		name, secret string
		server       server.Options
		userinfo     string
	}{
		{"wrong password", "Wr0ngPassw0rd", server.Options{Username: "app", Password: "right"}, "app:Wr0ngPassw0rd"},
		{"token in url", "T0kenInUrl", server.Options{Authorization: "T0kenInUrl"}, "T0kenInUrl"},
		{"password in url", "R1ghtPassw0rd", server.Options{Username: "app", Password: "R1ghtPassw0rd"}, "app:R1ghtPassw0rd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startNATS(t, &tt.server)
			url := strings.Replace(s.ClientURL(), "nats://", "nats://"+tt.userinfo+"@", 1)
			health := startHealth(t, true)
			c := config(t, url, health.URL)
			var logs syncBuffer
			ctx, cancel := context.WithCancel(context.Background())
			sig := make(chan os.Signal, 1)
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, c, sig, zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(&logs), zapcore.InfoLevel)))
			}()
			deadline := time.Now().Add(wait)
			for !strings.Contains(logs.String(), "NATS") {
				if time.Now().After(deadline) {
					t.Fatalf("nothing logged about NATS:\n%s", logs.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			sig <- syscall.SIGTERM
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			cancel()
			out := logs.String()
			t.Log(out)
			if strings.Contains(out, tt.secret) {
				t.Fatalf("the log holds the secret %q:\n%s", tt.secret, out)
			}
			if !strings.Contains(out, "xxxxx@") {
				t.Fatalf("the log does not show the redacted url:\n%s", out)
			}
		})
	}
}

// TestParseErrorRedacted: a malformed url's error does not repeat its
// password.
func TestParseErrorRedacted(t *testing.T) {
	_, err := Parse([]string{"--nats", "nats://app:Se cret@127.0.0.1:4222", "--id", "a", "--url", "http://127.0.0.1:1"},
		func(string) string { return "" }, &bytes.Buffer{})
	if err == nil || strings.Contains(err.Error(), "Se cret") {
		t.Fatalf("error %v", err)
	}
}
