package demo

import (
	"fmt"
	"html/template"
	"io"
	"net/http"

	"golang.org/x/net/websocket"
)

func (p *process) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", p.page)
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, p.id)
	})
	mux.Handle("GET /ws", websocket.Handler(func(ws *websocket.Conn) {
		_, _ = io.Copy(ws, ws)
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" { // Leave does not wait for WebSockets
			p.serving.Add(1)
			defer p.serving.Add(-1)
		}
		if p.hung.Load() {
			// Neither an answer nor an error: the request waits until
			// the gateway cancels it or the process ends.
			select {
			case <-r.Context().Done():
			case <-p.release:
			}
			panic(http.ErrAbortHandler)
		}
		w.Header().Set("X-Instance", p.id)
		w.Header().Set("X-Version", p.version)
		mux.ServeHTTP(w, r)
	})
}

var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>{{.ID}} · caddy-cx demo</title>
<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}
h1{font-size:2.5em;margin:0}code{background:#eee;padding:0 .3em}#log{font-family:monospace;white-space:pre}</style>
</head><body>
<h1>Served by {{.ID}}</h1>
<p>This page came from demo instance <code>{{.ID}}</code>, version <code>{{.Version}}</code>,
at <code>{{.URL}}</code>, started at <code>{{.Started}}</code>. Reload it while you stop instances: the gateway
sends you to whichever instance is alive. The instances: <a href="/ha">/ha</a>.</p>
<p>WebSocket echo through the gateway (it stays open while other instances come and go):</p>
<div id="log"></div>
<script>
const log = document.getElementById("log");
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
let n = 0;
ws.onopen = () => { log.textContent += "open\n"; setInterval(() => ws.send("ping " + (++n)), 1000); };
ws.onmessage = (e) => { log.textContent = "echo: " + e.data + "\n"; };
ws.onclose = () => { log.textContent += "closed (the instance behind it went away)\n"; };
</script>
</body></html>
`))

func (p *process) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = pageTemplate.Execute(w, map[string]string{
		"ID": p.id, "Version": p.version, "URL": p.url, "Started": p.started.Format("15:04:05.000"),
	})
}
