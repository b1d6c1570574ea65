// Package deploy holds no code: its tests keep the deployment files
// consistent, working and safe by default (docker-compose.yml, Dockerfile,
// deploy/Caddyfile, Caddyfile.example, the NATS configurations under
// deploy/nats, deploy/prometheus/prometheus.yml, the systemd units under
// deploy/systemd and xcaddy.json). They start real NATS servers with the
// shipped permissions and with the JWT scoped-signing-key form, and prove
// an instance's user cannot publish another instance's heartbeats. The
// Helm chart's tests are in deploy/helm.
package deploy
