package cxcmd

import (
	"runtime/debug"
	"strings"
)

// ModulePath is caddy-cx's Go module.
const ModulePath = "github.com/caddy-cx/caddy-cx"

// Version says which caddy-cx this binary holds, from its build info: the
// module version (a tag, or a pseudo-version of the commit), and the
// commit when the binary was built from a checkout. In a Caddy built with
// xcaddy caddy-cx is a dependency; in cmd/caddy-cx it is the main module.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "caddy-cx unknown"
	}
	version := ""
	if bi.Main.Path == ModulePath {
		version = bi.Main.Version
	}
	for _, dep := range bi.Deps {
		if dep.Path == ModulePath {
			version = dep.Version
			if dep.Replace != nil {
				version += " => " + dep.Replace.Path
			}
		}
	}
	if version == "" {
		version = "(devel)"
	}
	parts := []string{"caddy-cx " + version}
	if commit := setting(bi, "vcs.revision"); commit != "" {
		if setting(bi, "vcs.modified") == "true" {
			commit += ", modified"
		}
		parts = append(parts, "commit "+commit)
	}
	return strings.Join(parts, " ")
}

func setting(bi *debug.BuildInfo, key string) string {
	for _, s := range bi.Settings {
		if s.Key == key {
			return s.Value
		}
	}
	return ""
}
