# syntax=docker/dockerfile:1

# One image build for the three services of the platform. Pick the binary
# with a final target:
#
#   docker build --target api       -t maas-api .
#   docker build --target scheduler -t maas-scheduler .
#   docker build --target worker    -t maas-worker .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

########################################################################
# Builder: compile the whole workspace once, in release mode.
########################################################################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

WORKDIR /src

# The whole workspace: manifests, lockfile, library crates, services, and the
# SQL migrations (embedded into the binaries at compile time).
COPY Cargo.toml Cargo.lock ./
COPY crates/ crates/
COPY services/ services/
COPY tools/ tools/
COPY migrations/ migrations/

# Registry, git checkouts and the target dir live in BuildKit caches, so
# rebuilds after a source change only recompile what changed. The cache is
# not part of the image, hence the copy of the binaries out of it.
RUN --mount=type=cache,id=maas-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=maas-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=maas-target,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p maas-api -p maas-scheduler -p maas-worker -p maasctl \
    && mkdir -p /out \
    && cp target/release/maas-api target/release/maas-scheduler target/release/maas-worker target/release/maasctl /out/

########################################################################
# Runtime: small Debian with CA certificates, curl for health checks, and
# an unprivileged user.
########################################################################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 maas \
    && useradd --system --uid 10001 --gid maas --home-dir /app --shell /usr/sbin/nologin maas \
    && mkdir -p /app /models \
    && chown maas:maas /app

COPY --from=builder /out/maas-api /out/maas-scheduler /out/maas-worker /out/maasctl /usr/local/bin/

WORKDIR /app
USER maas:maas

ENV MAAS_LOG_FORMAT=json

########################################################################
# Final targets, one per service.
########################################################################

# Tenant and admin HTTP API. `serve` is the default command; `migrate` and
# `admin-token` can be given instead.
FROM runtime AS api
ENV MAAS_API_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/maas-api"]
CMD ["serve"]

# Fair-share scheduler (health endpoints only).
FROM runtime AS scheduler
ENV MAAS_SCHEDULER_LISTEN=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/maas-scheduler"]

# Model worker (health endpoints only). Model files are mounted at /models.
FROM runtime AS worker
ENV MAAS_WORKER_LISTEN=0.0.0.0:8082 \
    MAAS_MODELS_DIR=/models
EXPOSE 8082
ENTRYPOINT ["/usr/local/bin/maas-worker"]
