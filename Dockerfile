# caddy-cx: Caddy with the standard modules and the caddy-cx modules.
#
#   docker build -t caddy-cx:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run -p 80:80 -v $PWD/deploy/Caddyfile:/etc/caddy/Caddyfile:ro caddy-cx:0.1.0
#   docker run caddy-cx:0.1.0 announce --nats nats://nats:4222 --id app1 --url http://app1:8080
#
# The gateway runs as the unprivileged user caddy (uid 1000). Docker (20.10
# and later) lets any user of a container bind ports below 1024, so :80 works
# as is. The binary has no file capability on purpose: with the capabilities
# dropped (Kubernetes' `drop: [ALL]`) such a binary cannot even start; the
# Helm chart listens on 8080 instead.
FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/caddy-cx ./cmd/caddy-cx

FROM alpine:3.22
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="caddy-cx" \
	org.opencontainers.image.description="Caddy gateway that routes to the instances announcing themselves over NATS heartbeats" \
	org.opencontainers.image.source="https://github.com/caddy-cx/caddy-cx" \
	org.opencontainers.image.licenses="Apache-2.0" \
	org.opencontainers.image.version="${VERSION}" \
	org.opencontainers.image.revision="${REVISION}"
RUN apk add --no-cache ca-certificates tzdata \
	&& addgroup -S -g 1000 caddy \
	&& adduser -S -D -H -u 1000 -G caddy -h /data -s /sbin/nologin caddy \
	&& mkdir -p /etc/caddy /data /config \
	&& chown caddy:caddy /data /config
COPY --from=build /out/caddy-cx /usr/bin/caddy-cx
COPY deploy/Caddyfile /etc/caddy/Caddyfile
# Caddy keeps certificates in /data and its autosaved config in /config.
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config
EXPOSE 80 443 443/udp
USER caddy:caddy
WORKDIR /srv
# The admin API answers on localhost:2019 inside the container whatever the
# sites are (a Caddyfile with `admin off` needs its own check). Containers
# that run `announce` instead have no admin API: docker-compose.yml and the
# Helm chart give them their own check or none.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
	CMD wget -q -O /dev/null http://127.0.0.1:2019/config/ || exit 1
ENTRYPOINT ["caddy-cx"]
CMD ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
