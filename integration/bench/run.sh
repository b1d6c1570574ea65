#!/bin/sh
# Benchmarks of caddy-cx beside nginx and stock Caddy; writes docs/BENCHMARKS.md.
# Usage (from anywhere): integration/bench/run.sh [flags of the bench program]
#   e.g. integration/bench/run.sh -rounds 5 -only throughput
# Installs wrk and nginx (Debian packages) if absent. Everything runs on
# 127.0.0.1 and stops by itself (about 10 minutes with the defaults).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
need=""
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
if [ -n "$need" ]; then
	echo "installing:$need"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# nginx-light is gone from newer Debian releases; nginx is the same server.
	apt-get install -y -qq $need || apt-get install -y -qq $(echo "$need" | sed 's/nginx-light/nginx/')
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)
bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
echo "building into $bindir"
go build -o "$bindir/caddy-cx" ./cmd/caddy-cx
go build -o "$bindir/testbackend" ./integration/testbackend
go build -o "$bindir/nats-server" github.com/nats-io/nats-server/v2
go build -o "$bindir/bench" ./integration/bench
mkdir -p docs
"$bindir/bench" -bindir "$bindir" -nginx "$nginx" -out docs/BENCHMARKS.md "$@"
