// Package deploy holds no code: its tests keep the deployment files
// consistent and working (docker-compose.yml, Dockerfile, deploy/Caddyfile,
// the NATS configurations under deploy/nats and xcaddy.json), starting a
// real NATS server with the permissions configuration.
package deploy
