package redact

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestCoreRedactsEveryLine: a password reaches a zap line through the
// message, a string, an error, a Stringer, a reflected value and a field
// given to With; none of them may carry it.
func TestCoreRedactsEveryLine(t *testing.T) {
	const secret = "S3cretPw"
	url := "nats://app:" + secret + "@127.0.0.1:4222"
	obs, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(NewCore(obs)).With(zap.String("server", url))
	log.Info("connecting to "+url,
		zap.String("url", url),
		zap.Error(errors.New("dial "+url+": refused")),
		zap.Stringer("stringer", stringer(url)),
		zap.Any("reflected", struct{ URL string }{url}),
	)
	if NewCore(NewCore(obs)) != NewCore(obs) {
		t.Error("a redacting core is wrapped twice")
	}
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d entries", len(entries))
	}
	e := entries[0]
	var all strings.Builder
	all.WriteString(e.Message)
	for k, v := range e.ContextMap() {
		fmt.Fprintf(&all, " %s=%v", k, v)
	}
	if strings.Contains(all.String(), secret) {
		t.Fatalf("the line holds the password: %s", all.String())
	}
	if n := strings.Count(all.String(), "app:xxxxx@"); n != 6 {
		t.Errorf("%d redacted urls, want 6 (message, server, url, error, stringer, reflected): %s", n, all.String())
	}
}
