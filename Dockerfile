# syntax=docker/dockerfile:1

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sluice \
    && install -m 0755 target/release/sluice /sluice

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 sluice \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sluice
COPY --from=builder /sluice /usr/local/bin/sluice
USER 10001:10001
EXPOSE 8081 9090
ENTRYPOINT ["sluice"]
CMD ["serve"]
