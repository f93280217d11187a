# syntax=docker/dockerfile:1
#
# datalayer container image.
#
#   docker build -t datalayer:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 \
#     -e DATALAYER__REDIS__URL=redis://host.docker.internal:6379 datalayer:0.1.0
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) ->
# builder (dependencies cooked in their own cached layer, then the project) ->
# runtime (distroless, non-root, no shell).
#
# The builder is Debian 12 (bookworm) like the runtime image, so the binary
# links against the glibc it will find at run time. protoc comes from the
# vendored `protoc-bin-vendored` crate and mimalloc's C code is compiled with
# the gcc the rust image already ships: no apt step anywhere.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.76

# --- chef: the Rust toolchain plus cargo-chef ------------------------------
FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /app

# --- planner: reduce the project to the manifests that decide dependencies --
# Any source change reruns this stage, but the recipe it writes only changes
# when Cargo.toml / Cargo.lock do, so the cook layer below stays cached.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder: dependencies first (cached), then the project -----------------
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# The same build command CI runs.
RUN cargo build --release --locked

# --- runtime: distroless (glibc, libgcc, CA certificates; no shell) ---------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="datalayer" \
      org.opencontainers.image.description="Rate limiting, caching and sessions for bots over gRPC, backed by Redis" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /app/target/release/datalayer /usr/local/bin/datalayer
USER 65532:65532
# 50051: gRPC (server.addr); 9090: Prometheus /metrics (metrics.addr).
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/datalayer"]
