package caddymodule

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provisionedHTTP provisions (without starting: nothing listens) the http
// app of a Caddyfile.
func provisionedHTTP(t *testing.T, caddyfile string) *caddyhttp.App {
	t.Helper()
	raw, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("{\n\tadmin off\n\tpersist_config off\n}\n"+caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v\n%s", err, caddyfile)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	ctx, err := caddy.ProvisionContext(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	app, err := ctx.App("http")
	if err != nil {
		t.Fatal(err)
	}
	return app.(*caddyhttp.App)
}

// TestUnprotectedStatusDetected: a cx_status that a site serves beyond
// loopback is reported unless an authentication handler covering its path
// runs before it, the site is bound to loopback, or it is marked public.
func TestUnprotectedStatusDetected(t *testing.T) {
	const auth = "{\n\t\tadmin $2a$04$6CTjTSP2yAR7qDSseYa7DOjg5kIomkQ41Sukpw5/HcujjU5LBAIJm\n\t}"
	tests := []struct {
		name, site string
		warn       bool
	}{
		{"alone", "cx_status /ha", true},
		{"basic_auth covering", "basic_auth /ha* " + auth + "\n\tcx_status /ha", false},
		{"basic_auth same path", "basic_auth /ha " + auth + "\n\tcx_status /ha", false},
		{"basic_auth everywhere", "basic_auth " + auth + "\n\tcx_status /ha", false},
		{"basic_auth elsewhere", "basic_auth /admin* " + auth + "\n\tcx_status /ha", true},
		{"basic_auth narrower", "basic_auth /ha/x " + auth + "\n\tcx_status /ha*", true},
		{"handle block", "handle /ha* {\n\t\tbasic_auth " + auth + "\n\t\tcx_status\n\t}", false},
		{"route block", "route /ha* {\n\t\tbasic_auth " + auth + "\n\t\tcx_status\n\t}", false},
		{"public", "cx_status /ha {\n\t\tpublic\n\t}", false},
		{"bound to loopback", "bind 127.0.0.1 ::1\n\tcx_status /ha", false},
		{"no cx_status", "respond ok", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := provisionedHTTP(t, fmt.Sprintf("http://example.test:%d {\n\t%s\n}\n", freePort(t), tt.site))
			found := 0
			for _, srv := range app.Servers {
				if len(openListeners(srv.Listen)) > 0 {
					found += len(unprotectedStatus(srv.Routes, authScope{}, nil))
				}
			}
			if (found > 0) != tt.warn {
				t.Fatalf("%d unprotected cx_status found, want warning %v", found, tt.warn)
			}
		})
	}
}

// TestUnprotectedStatusLogged: the warning is logged when the config
// starts.
func TestUnprotectedStatusLogged(t *testing.T) {
	natsURL := startNATS(t)
	logFile, _ := loggedGatewaySite(t, "\t\tnats "+natsURL, "cx_status /ha\n\tcx_proxy")
	logHas(t, logFile, "cx_status is served without authentication")
}
