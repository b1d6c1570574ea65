# caddy-cx: Caddy with the standard modules and the caddy-cx modules.
#
#   docker build -t caddy-cx .
#   docker run -p 80:80 -v $PWD/deploy/Caddyfile:/etc/caddy/Caddyfile:ro caddy-cx
#   docker run caddy-cx announce --nats nats://nats:4222 --id app1 --url http://app1:8080
FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/caddy-cx ./cmd/caddy-cx

FROM alpine:3.22
RUN apk add --no-cache ca-certificates tzdata \
	&& mkdir -p /etc/caddy /data /config
COPY --from=build /out/caddy-cx /usr/bin/caddy-cx
COPY deploy/Caddyfile /etc/caddy/Caddyfile
# Caddy keeps certificates in /data and its autosaved config in /config.
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config
EXPOSE 80 443 443/udp 2019
WORKDIR /srv
ENTRYPOINT ["caddy-cx"]
CMD ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
