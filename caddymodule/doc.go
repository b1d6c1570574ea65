// Package caddymodule is the Caddy glue of caddy-cx. The rules live in the
// Caddy-free packages heartbeat (the protocol) and membership (who is
// routed); this package connects them to Caddy. docs/ARCHITECTURE.md has
// the flows; in short:
//
// Modules, one per file with its Caddyfile unmarshaler beside it:
//   - app.go: the `cx` app, the NATS connection (natslink.go) or an
//     embedded NATS server (embedded.go), shared across reloads through
//     usage pools; secrets.go resolves {env.*}/{file.*} placeholders.
//   - upstreams.go: `dynamic cx`, the upstream source. It reads the
//     membership snapshot of its subject prefix (service.go: one Service
//     per NATS connection and prefix, reconfigured in place on reload) and
//     records the try's candidates in the request's state (request.go).
//   - failover.go, roundrobin.go: the cx_failover and cx_round_robin
//     selection policies (selection.go, slowstart.go): never the same
//     instance twice in one request, passive health (health.go) judged
//     from the outcome the transport recorded, and one definition of the
//     primary (primary.go).
//   - transport.go: the `cx` transport, Caddy's http transport plus the
//     dial guard (dialguard.go, loops.go, listeners.go), cancellation of
//     tries waiting on an instance that turns stale (inflight.go), and
//     bodies that are never replayed half (bodyreplay.go).
//   - proxy_caddyfile.go: the cx_proxy directive, reverse_proxy with the
//     cx source, policy, transport and retry defaults.
//   - status.go, status_data.go, admin.go: the cx_status page and the
//     admin API's GET /cx/instances, one JSON report.
//   - metrics.go: the caddy_cx_ Prometheus metrics, read at scrape time.
//
// The request path takes no lock but a per-instance list's for a pointer
// swap; heartbeats are handled off it and publish immutable snapshots.
package caddymodule
