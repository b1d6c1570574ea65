package caddymodule

import (
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"go.uber.org/zap"
)

// warnUnprotectedStatus warns about each cx_status handler that a server
// listening beyond loopback runs with no authentication handler before it:
// the page shows every instance's url, version and meta to whoever asks.
// It reads the provisioned routes of the config being started.
func (a *App) warnUnprotectedStatus() {
	app, err := a.ctx.AppIfConfigured("http")
	if err != nil {
		return
	}
	httpApp, ok := app.(*caddyhttp.App)
	if !ok {
		return
	}
	for name, srv := range httpApp.Servers {
		open := openListeners(srv.Listen)
		if len(open) == 0 {
			continue
		}
		if n := len(unprotectedStatus(srv.Routes, authScope{}, nil)); n > 0 {
			a.logger.Warn("cx_status is served without authentication on a listener beyond loopback: whoever reaches it sees every instance's url, version and meta",
				zap.String("server", name), zap.Strings("listen", open), zap.Int("handlers", n),
				zap.String("fix", "put basic_auth (or another authentication handler) before cx_status with a path that covers it (basic_auth /ha* before cx_status /ha), "+
					"bind the site to 127.0.0.1, or set `public` in cx_status when it is protected otherwise (firewall, forward_auth, a proxy in front)"))
		}
	}
}

// openListeners returns the listen addresses reachable beyond loopback:
// any host (":80"), or one that is not a loopback address.
func openListeners(listen []string) []string {
	var open []string
	for _, l := range listen {
		addr, err := caddy.ParseNetworkAddress(l)
		if err != nil || addr.IsUnixNetwork() || addr.IsFdNetwork() {
			continue
		}
		if !loopbackHost(addr.Host) {
			open = append(open, l)
		}
	}
	return open
}

// authScope is what authentication handlers already ran cover: every
// request, or those of these path patterns.
type authScope struct {
	all   bool
	paths []string
}

// covers reports whether requests matching paths (nil: any path) have
// passed authentication.
func (s authScope) covers(paths []string) bool {
	if s.all {
		return true
	}
	if len(paths) == 0 {
		return false
	}
	for _, p := range paths {
		if !slices.ContainsFunc(s.paths, func(q string) bool { return pathCovers(q, p) }) {
			return false
		}
	}
	return true
}

// pathCovers reports whether path pattern q matches every path that p
// does: equal, or q is a prefix wildcard (/ha*) that p is under.
func pathCovers(q, p string) bool {
	if q == p || q == "*" {
		return true
	}
	prefix, ok := strings.CutSuffix(q, "*")
	return ok && !strings.Contains(prefix, "*") && strings.HasPrefix(strings.TrimSuffix(p, "*"), prefix)
}

// unprotectedStatus returns the cx_status handlers in routes that no
// authentication handler runs before: earlier in their route, in an
// enclosing route, or in an earlier non-terminal route of the same list
// whose path matchers cover theirs. It errs on the side of warning: a
// matcher it cannot compare (host, header, expression) counts as not
// covering.
func unprotectedStatus(routes caddyhttp.RouteList, scope authScope, outer []string) []*StatusPage {
	var found []*StatusPage
	for _, r := range routes {
		paths, pathOnly := routePaths(r)
		if paths == nil {
			paths = outer
		}
		inRoute := scope
		authed := false
		for _, h := range r.Handlers {
			switch h := h.(type) {
			case *caddyauth.Authentication:
				inRoute, authed = authScope{all: true}, true
			case *caddyhttp.Subroute:
				found = append(found, unprotectedStatus(h.Routes, inRoute, paths)...)
			case *StatusPage:
				if !h.Public && !inRoute.covers(paths) {
					found = append(found, h)
				}
			}
		}
		if authed && !r.Terminal && pathOnly {
			if len(r.MatcherSets) == 0 {
				scope = authScope{all: true}
			} else {
				scope.paths = append(slices.Clone(scope.paths), paths...)
			}
		}
	}
	return found
}

// routePaths returns the path patterns of r's matchers, and whether
// paths are all it matches on (no matcher at all counts). Several matcher
// sets are alternatives: their paths add up.
func routePaths(r caddyhttp.Route) ([]string, bool) {
	var paths []string
	pathOnly := true
	for _, set := range r.MatcherSets {
		for _, m := range set {
			switch m := m.(type) {
			case caddyhttp.MatchPath:
				paths = append(paths, m...)
			case *caddyhttp.MatchPath:
				paths = append(paths, *m...)
			default:
				pathOnly = false
			}
		}
	}
	return paths, pathOnly
}
