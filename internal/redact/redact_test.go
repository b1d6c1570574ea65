package redact

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://gw:s3cret@127.0.0.1:4222", "nats://gw:xxxxx@127.0.0.1:4222"},
		{"nats://t0ken@127.0.0.1:4222", "nats://xxxxx@127.0.0.1:4222"},
		{"servers nats://a:p1@h1:4222,nats://b:p2@h2:4222 down", "servers nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222 down"},
		{`parse "nats://u:p@ss/w@rd@h:1": bad`, `parse "nats://u:xxxxx@h:1": bad`},
		{"nats://127.0.0.1:4222 and mail admin@example.com", "nats://127.0.0.1:4222 and mail admin@example.com"},
		{"no url here", "no url here"},
	}
	for _, tt := range tests {
		if got := String(tt.in); got != tt.want {
			t.Errorf("String(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestURLAndKnown(t *testing.T) {
	if got := URL("nats://app:Se cret@h:4222"); got != "nats://app:xxxxx@h:4222" {
		t.Errorf("URL = %q", got)
	}
	bad := strings.Join([]string{"nats://app:Se", "cret@h:4222"}, " ")
	_, err := url.Parse(bad) // the error repeats the url
	msg := Known(fmt.Sprintf("bad %q: %v", bad, err), bad)
	if strings.Contains(msg, "Se cret") || strings.Contains(msg, "cret") {
		t.Errorf("Known left the password: %s", msg)
	}
}

type stringer string

func (s stringer) String() string { return string(s) }

func TestErr(t *testing.T) {
	base := errors.New("nats://u:Pw@h:1 refused")
	err := Err(fmt.Errorf("wrap: %w", base))
	if strings.Contains(err.Error(), "Pw") || !errors.Is(err, base) {
		t.Errorf("Err = %v", err)
	}
	if Err(nil) != nil || Error(nil) != "" {
		t.Error("nil")
	}
}
