# syntax=docker/dockerfile:1
#
# One image with Pivot's three binaries: pivot-control-plane (the default command),
# pivot-proxy and pivotctl. Build: `docker build -t pivot .` (BuildKit, for the cache
# mounts). The runtime stage is distroless: no shell, no package manager, user nonroot
# (65532); the health check is `pivotctl probe` (an HTTP GET), so it needs neither.
#
# Secrets (admin token, proxy tokens, backend passwords) are never part of the image:
# pass them as environment variables or Kubernetes Secrets (docs/operations.md).

ARG RUST_VERSION=1.94

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directory are cache mounts (kept across builds, not in any
# layer), so the binaries are copied out in the same step. The `dist` profile is release
# with whole-program optimisation (Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p pivot-control-plane -p pivot-proxy -p pivotctl \
    && mkdir -p /out/bin /out/state/pivot \
    && cp target/dist/pivot-control-plane target/dist/pivot-proxy target/dist/pivotctl /out/bin/

# glibc and libgcc match the builder's Debian 12; nothing else is needed at run time
# (SQLite is compiled in, TLS is rustls).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/ /usr/local/bin/
# The control plane's store and the proxy's config cache: /var/lib/pivot, owned by
# nonroot (copied as an item of /out/state/, so --chown applies to the directory
# itself), so that a named volume mounted there starts writable.
COPY --from=build --chown=65532:65532 /out/state/ /var/lib/
USER 65532:65532
WORKDIR /var/lib/pivot

# Listen on every interface inside the container (the binaries' own defaults are
# loopback). Each binary reads only its own variables; PIVOT_LOG_FORMAT is both's.
ENV PIVOT_DATA_DIR=/var/lib/pivot/control-plane \
    PIVOT_HTTP_LISTEN=0.0.0.0:8080 \
    PIVOT_GRPC_LISTEN=0.0.0.0:50051 \
    PIVOT_LISTEN=0.0.0.0:6379 \
    PIVOT_ADMIN_LISTEN=0.0.0.0:9121 \
    PIVOT_CACHE_DIR=/var/lib/pivot/proxy-cache \
    PIVOT_LOG_FORMAT=json \
    PIVOT_PROBE_URL=http://127.0.0.1:8080/readyz

# control plane: HTTP (API, UI, /metrics), gRPC; proxy: RESP, admin HTTP (/metrics).
EXPOSE 8080 50051 6379 9121

# Exec form: there is no shell. A proxy container sets
# PIVOT_PROBE_URL=http://127.0.0.1:9121/readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/pivotctl", "probe", "--timeout", "2s"]

CMD ["/usr/local/bin/pivot-control-plane"]
