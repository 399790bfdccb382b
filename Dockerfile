# syntax=docker/dockerfile:1
# One image holds every APOLLO binary (the four services and apolloctl); each
# Deployment / compose service picks its command.
#   docker build -t apollo:dev .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --locked: build exactly the dependency versions of Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bins \
 && mkdir /out \
 && cp target/release/apollo-ingest target/release/apollo-forecaster \
       target/release/apollo-scheduling target/release/apollo-orchestration \
       target/release/apolloctl /out/

FROM debian:bookworm-slim
# ca-certificates for TLS to NATS/OTLP; curl only for the compose
# healthchecks (Kubernetes probes use gRPC health and HTTP directly).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 apollo \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin apollo
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
ENV APOLLO_LOG_FORMAT=json
EXPOSE 50051 50053 50054 50055 9090
ENTRYPOINT []
CMD ["apolloctl", "--help"]
