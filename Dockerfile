# syntax=docker/dockerfile:1
#
# gleepost-gateway image: a static-ish Rust binary on distroless (glibc, no shell).
#   docker build -t gleepost/gleepost-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 gleepost/gleepost-gateway:0.1.0 --dev
# Configuration comes from GATEWAY_* / REDIS_URL environment variables (see the
# Helm chart in helm/gleepost-gateway). Needs BuildKit (the default builder) for
# the cache mounts, which keep the cargo registry and target dir between builds.

ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The target dir is a cache mount (not in the image layer), so copy the binary
# out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p gleepost-gateway --locked \
 && install -D -m 0755 target/release/gleepost-gateway /out/gleepost-gateway

# Runtime: distroless cc (glibc + libgcc, same Debian 12 as the builder), user
# nonroot (65532). No shell, no package manager: nothing but the binary.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="gleepost-gateway" \
      org.opencontainers.image.description="Gleepost realtime WebSocket gateway" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /out/gleepost-gateway /usr/local/bin/gleepost-gateway
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:9090
# 8080: public WebSocket (GET /ws); 9090: admin (POST /v1/publish, /metrics,
# /healthz, /readyz) - keep 9090 off the public network.
EXPOSE 8080 9090
USER 65532:65532
# No HEALTHCHECK: there is no shell or curl in the image; Kubernetes probes the
# admin port (/healthz, /readyz) instead. Arguments after the image name are
# passed to the binary (e.g. --dev).
ENTRYPOINT ["/usr/local/bin/gleepost-gateway"]
