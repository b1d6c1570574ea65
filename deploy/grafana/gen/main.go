// Command gen writes the caddy-cx Grafana dashboard (see package grafana):
//
//	go generate ./deploy/grafana
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/caddy-cx/caddy-cx/deploy/grafana"
)

func main() {
	out := flag.String("o", "caddy-cx.json", "file to write")
	flag.Parse()
	data, err := grafana.JSON()
	if err == nil {
		err = os.WriteFile(*out, data, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
