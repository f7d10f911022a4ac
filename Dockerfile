# syntax=docker/dockerfile:1
# keygate's images, from one Dockerfile with two targets:
#
#   docker build --target gateway -t keygate-gateway .   # Caddy + the keygate module
#   docker build --target backend -t keygate-backend .   # the thin backend
#
# docker-compose.yml builds both. Static binaries (CGO_ENABLED=0) on
# distroless, running as the unprivileged "nonroot" user (65532); the probe
# used by the compose health checks is deploy/healthcheck, since the images
# have no shell, curl or wget.

FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Directories the runtime images write to, created here (distroless has no
# shell) and copied with the nonroot user's ownership. Named volumes mounted
# there start out with that ownership too.
RUN mkdir -p /rootfs/data /rootfs/config

FROM build AS build-gateway
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	go build -ldflags="-s -w" -o /out/keygate ./cmd/keygate && \
	go build -ldflags="-s -w" -o /out/healthcheck ./deploy/healthcheck

FROM build AS build-backend
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	go build -ldflags="-s -w" -o /out/backend ./cmd/backend && \
	go build -ldflags="-s -w" -o /out/healthcheck ./deploy/healthcheck

# The gateway: serves the root Caddyfile (compose mounts it over this copy).
# Caddy's data (keygate's embedded key store when KEYGATE_REDIS is empty) in
# /data, its autosaved config in /config.
FROM gcr.io/distroless/static-debian12:nonroot AS gateway
COPY --from=build --chown=65532:65532 /rootfs/ /
COPY --from=build-gateway /out/keygate /out/healthcheck /usr/local/bin/
COPY Caddyfile /etc/keygate/Caddyfile
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config KEYGATE_LISTEN=:8080
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["run", "--config", "/etc/keygate/Caddyfile", "--adapter", "caddyfile"]

# The backend: uploads (and its embedded store without BACKEND_REDIS_URL) in
# /data. It needs KEYGATE_UPSTREAM_SECRET, the gateway's shared secret.
FROM gcr.io/distroless/static-debian12:nonroot AS backend
COPY --from=build --chown=65532:65532 /rootfs/ /
COPY --from=build-backend /out/backend /out/healthcheck /usr/local/bin/
ENV BACKEND_LISTEN=0.0.0.0:8081 BACKEND_DATA_DIR=/data
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/backend"]
