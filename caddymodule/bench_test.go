package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-cx/caddy-cx/heartbeat"
)

// benchProxy measures GETs through the in-process gateway configured with
// site (PORT, BACKEND filled in) against one backend.
func benchProxy(b *testing.B, site string) {
	natsURL := startNATS(b)
	app1 := startBackend(b, "app1")
	site = strings.ReplaceAll(site, "{BACKEND}", strings.TrimPrefix(app1.url, "http://"))
	base := gateway(b, natsURL, site)
	newInstance(b, connect(b, natsURL), "app1", app1.url, 0).beat(heartbeat.StateReady)
	servedBy(b, base, "app1", 0x7fffffff)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	c := &http.Client{Transport: tr}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(base)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkCxProxy is cx_proxy with its defaults.
func BenchmarkCxProxy(b *testing.B) {
	benchProxy(b, "http://127.0.0.1:{PORT} {\n\tcx_proxy {\n\t\tstale_after 1m\n\t}\n}")
}

// BenchmarkStaticSameSettings is reverse_proxy with cx_proxy's settings
// but a static upstream: the difference is the membership lookup and the
// cx transport's bookkeeping.
func BenchmarkStaticSameSettings(b *testing.B) {
	benchProxy(b, fmt.Sprintf("http://127.0.0.1:{PORT} {\n\treverse_proxy {BACKEND} {\n\t\tlb_retries 16\n%s\t\trequest_buffers 64KiB\n\t\tstream_close_delay 24h\n\t\ttransport http {\n\t\t\tkeepalive_idle_conns_per_host 128\n\t\t}\n\t}\n}", DefaultRetryMatch))
}

// BenchmarkStockReverseProxy is Caddy's reverse_proxy with its defaults.
func BenchmarkStockReverseProxy(b *testing.B) {
	benchProxy(b, "http://127.0.0.1:{PORT} {\n\treverse_proxy {BACKEND}\n}")
}
