package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-cx/caddy-cx/heartbeat"
	"github.com/caddy-cx/caddy-cx/internal/redact"
)

// natsAuth is the app's NATS settings with their placeholders resolved.
// It is never marshalled into the config Caddy serves (GET /config/ shows
// what was loaded, placeholders and all), and never logged.
type natsAuth struct {
	URLs []string
	heartbeat.Auth
}

// resolveSecrets fills a.auth from the configured fields, resolving Caddy's
// global placeholders ({env.*}, {file.*}) once, at provision.
func (a *App) resolveSecrets() error {
	repl := caddy.NewReplacer()
	resolve := func(field, in string) (string, error) {
		out, err := repl.ReplaceOrErr(in, true, true)
		if err != nil {
			// the error names the placeholder, never its value
			return "", fmt.Errorf("cx: %s: %v (a literal { or } is written \\{ or \\})", field, err)
		}
		return out, nil
	}
	auth := natsAuth{Auth: heartbeat.Auth{TLS: a.TLS}}
	for _, u := range a.NATS {
		r, err := resolve("nats server "+redact.URL(u), u)
		if err != nil {
			return err
		}
		auth.URLs = append(auth.URLs, r)
	}
	for _, f := range []struct {
		name, in string
		out      *string
	}{
		{"credentials", a.Credentials, &auth.Credentials},
		{"token", a.Token, &auth.Token},
		{"user", a.User, &auth.User},
		{"password", a.Password, &auth.Password},
		{"nkey", a.NKey, &auth.NKey},
	} {
		var err error
		if *f.out, err = resolve(f.name, f.in); err != nil {
			return err
		}
	}
	a.auth = auth
	a.warnClearSecrets()
	return nil
}

// warnClearSecrets warns about a password written into a NATS url: the
// config API shows it to whoever can read the config.
func (a *App) warnClearSecrets() {
	for _, u := range a.NATS {
		parsed, err := url.Parse(u)
		if err != nil || parsed.User == nil || strings.Contains(u, "{") {
			continue
		}
		a.logger.Warn("a NATS url carries its password or token in the config, where GET /config/ shows it; use `user`/`password` or `token` with a placeholder like {env.NATS_PASSWORD} instead",
			zap.String("server", redact.URL(u)))
	}
}

// key identifies the connection in the link pool: the resolved settings,
// hashed so that the key holds no secret.
func (n natsAuth) key() (string, error) {
	b, err := json.Marshal(n)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "nats:" + hex.EncodeToString(sum[:]), nil
}
