package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

type report struct {
	started, finished time.Time
	throughput        []*tpRow
	failures          []failRow
	scale             []*scaleRow
}

func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-sr").Output()
	nginxV, _ := exec.Command(*nginxBin, "-v").CombinedOutput()
	wrkV, _ := exec.Command("wrk", "-v").CombinedOutput()
	wv, _, _ := strings.Cut(string(wrkV), " Copyright")
	return fmt.Sprintf("%d CPUs (%s), %s, %s, %s, %s, shared with other jobs",
		runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), runtime.Version(),
		strings.TrimSpace(strings.TrimPrefix(string(nginxV), "nginx version: ")), strings.TrimSpace(wv))
}

func (r *report) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Benchmarks\n\n")
	w("Written by `integration/bench/run.sh` on %s (%s).\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"), r.finished.Sub(r.started).Round(time.Second))
	w("Machine: %s.\n\n", machine())
	w("Everything runs on 127.0.0.1: wrk or the Go load generator, the gateway, the test backends (`integration/testbackend`, a Go HTTP server answering `GET /` with a few bytes), nats-server. ")
	w("The machine is small and shared, so figures are noisy: rounds are interleaved (every gateway once per round) and medians reported. These are benchmark figures, not pass/fail tests.\n\n")
	w("Gateways:\n\n")
	w("- **direct**: wrk against the backend itself;\n")
	w("- **nginx**: Debian's nginx with the HA guide's `nginx.conf` (primary + `backup`, `proxy_next_upstream error timeout http_502 http_503 http_504`, `proxy_read_timeout 300s`), one worker (the guide sets none), access log off;\n")
	w("- **stock Caddy**: the caddy-cx binary with a plain `reverse_proxy app1 app2 { lb_policy first; lb_retries 1; fail_duration 10s }` (the guide's nginx.conf translated: primary first, passive health as nginx's max_fails=1 fail_timeout=10s);\n")
	w("- **Caddy, cx_proxy's settings, static upstreams**: `reverse_proxy` with exactly what `cx_proxy` expands to (retries, retry match, request buffers, keep-alive pool, stream_close_delay) but a static upstream list and `lb_policy first`: the difference to caddy-cx is the membership lookup and the cx transport;\n")
	w("- **caddy-cx**: `cx_proxy { stale_after 1s }`, instances announcing on NATS every 200ms.\n\n")

	if len(r.throughput) > 0 {
		w("## Throughput and latency (%d rounds, medians)\n\n", *rounds)
		w("Throughput: `wrk -t2 -c%d -d%s`. Latency: %d requests/s for %s (open model) after each wrk run. CPU per request: the gateway's utime+stime (nginx: master and worker) over the wrk run / requests. Upstream connections: TCP connections the backends accepted during the wrk run, per wrk connection.\n\n",
			*wrkConns, *wrkDur, *rate, *rateDur)
		w("| gateway | requests/s | vs stock Caddy | CPU µs/request | upstream conns opened per client conn | p50 ms @%d/s | p99 ms @%d/s | errors |\n", *rate, *rate)
		w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		var stock float64
		for _, row := range r.throughput {
			if row.name == "caddy" {
				stock = median(row.rps)
			}
		}
		for _, row := range r.throughput {
			name := map[string]string{"caddy": "stock Caddy", "caddy-static-cx": "Caddy, cx_proxy's settings, static upstreams"}[row.name]
			if name == "" {
				name = row.name
			}
			w("| %s | %.0f | %s | %s | %.2f | %.2f | %.2f | %d |\n", name, median(row.rps), ratio(median(row.rps), stock),
				num(median(row.cpuUS), 1), median(row.connsPer), median(row.p50), median(row.p99), row.errors)
		}
		w("\nPer round (requests/s): ")
		var parts []string
		for _, row := range r.throughput {
			parts = append(parts, fmt.Sprintf("%s %s", row.name, fmtList(row.rps)))
		}
		w("%s.\n\n", strings.Join(parts, "; "))
	}
	if len(r.failures) > 0 {
		w("## Failures under load\n\n")
		w("GET at %d requests/s (open model) for %s; at %s the primary is SIGKILLed (crash), SIGSTOPped (hang: its kernel still accepts connections, nothing answers) or answers 503 to everything for 3s. The client gives up after %s. One run per cell. caddy-cx: stale_after 1s.\n\n",
			failRate, failDur, failAt, clientGives)
		w("| scenario | gateway | requests | client-visible errors | p99 | worst latency |\n| --- | --- | ---: | ---: | ---: | ---: |\n")
		for _, f := range r.failures {
			w("| %s | %s | %d | %d | %s | %s |\n", f.scenario, f.gateway, f.requests, f.errors, f.p99.Round(time.Millisecond), f.worst.Round(time.Millisecond))
		}
		w("\n")
	}
	if len(r.scale) > 0 {
		w("## caddy-cx with many announced instances\n\n")
		w("One `bench fleet` process per size publishes protocol-v1 heartbeats every second (spread over the second) for n ids on its own subject prefix and answers discovers: a real primary (priority 0) and a real backup (priority 1), and n-2 fakes at priority 10 pointing at the backup's address, so the real primary serves. The three gateways run side by side, one per prefix (`max_instances 20000`). Heartbeat CPU: each gateway's CPU over 10s with no HTTP traffic. RSS: after the throughput runs. Throughput: `wrk -t2 -c%d -d%s`, %d interleaved rounds, median.\n\n", *wrkConns, *wrkDur, *rounds)
		w("| announced instances | listed by /cx/instances | requests/s | vs 10 instances | heartbeat CPU, %% of one core | RSS MiB |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n")
		base := median(r.scale[0].rps)
		for _, s := range r.scale {
			known := "n/a"
			if s.known >= 0 {
				known = fmt.Sprint(s.known)
			}
			w("| %d | %s | %.0f | %s | %.1f | %.1f |\n", s.n, known, median(s.rps), ratio(median(s.rps), base), s.hbCPU, s.rssMiB)
		}
		w("\n")
	}
	return b.String()
}

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func num(x float64, prec int) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, x)
}

func fmtList(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(s, "/")
}
