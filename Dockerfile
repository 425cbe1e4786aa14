# syntax=docker/dockerfile:1
# A lean, reproducible image: base images pinned by digest, dependencies and build output kept in
# BuildKit cache mounts between builds, a stripped binary on a distroless runtime (glibc and
# CA certificates, no shell, no package manager), run as a non-root user, with OCI labels.
#
#   docker build --build-arg REVISION=$(git rev-parse --short=12 HEAD) \
#     --build-arg CREATED=$(date -u +%FT%TZ) -t sluice .
#
# Update a digest with `docker buildx imagetools inspect rust:1.95-bookworm` (or the runtime's name).
ARG RUST_IMAGE=rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

FROM ${RUST_IMAGE} AS builder
# The commit, for sluice_build_info (.git stays out of the build context).
ARG REVISION=unknown
ENV SLUICE_REVISION=${REVISION}
WORKDIR /src
COPY . .
# The registry and target/ live in cache mounts, so a source change rebuilds only Sluice itself;
# the stripped binary is copied out of the mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin sluice \
    && strip --strip-all -o /sluice target/release/sluice

FROM ${RUNTIME_IMAGE}
ARG REVISION=unknown
ARG CREATED=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="A distributed rate-limiting service: gRPC decisions counted in Redis, with an in-process fallback" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/example/sluice" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /sluice /usr/local/bin/sluice
# No transparent huge pages for the allocator's memory, on hosts where THP is `always` too: they
# would double the resident memory at start (docs/performance.md, "An allocator and a thread count").
ENV MIMALLOC_ALLOW_THP=0
# The chart's user (runAsUser 10001); distroless needs no passwd entry for it.
USER 10001:10001
EXPOSE 8081 9090
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve"]
