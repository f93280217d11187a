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

# Base images are pinned by digest (multi-arch index), so a rebuild uses the
# very same layers until someone moves the pin on purpose. The tag stays in
# front for readers; Docker resolves the digest alone. To move a pin, ask the
# registry for the tag's current index digest and paste it here:
#
#   docker buildx imagetools inspect rust:1.95-bookworm        # "Digest:"
#   crane digest gcr.io/distroless/cc-debian12:nonroot
#
# tests/deploy/test_dockerfile.py fails on any FROM without a digest.
#
# TODO(verify-digests): these two digests were taken from public references
# (several independent projects and a BuildKit log resolving the same tags),
# not read from the registries, which the machine that pinned them cannot
# reach. Confirm them with the commands above on a machine that can, and
# replace them if the registry answers differently.
ARG RUST_IMAGE=rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG CARGO_CHEF_VERSION=0.1.76
# OCI image labels (org.opencontainers.image.*), set at build time:
#
#   docker build \
#     --build-arg VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE="$(git remote get-url origin)" \
#     -t datalayer:0.1.0 .
#
# VERSION defaults to Cargo.toml's version (a test keeps them equal);
# REVISION and SOURCE are empty unless given.
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""

# --- chef: the Rust toolchain plus cargo-chef ------------------------------
FROM ${RUST_IMAGE} AS chef
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
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION
ARG REVISION
ARG SOURCE
LABEL org.opencontainers.image.title="datalayer" \
      org.opencontainers.image.description="Rate limiting, caching, sessions and more for bots over gRPC, backed by Redis" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=builder /app/target/release/datalayer /usr/local/bin/datalayer
USER 65532:65532
# 50051: gRPC (server.addr); 9090: Prometheus /metrics (metrics.addr).
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/datalayer"]
