# One image holds every APOLLO binary; each Deployment / compose service picks
# its command. Build: docker build -t apollo:dev .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins \
 && mkdir /out \
 && cp target/release/apollo-ingest target/release/apollo-forecaster \
       target/release/apollo-scheduling target/release/apollo-orchestration \
       target/release/apolloctl /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 apollo
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENV APOLLO_LOG_FORMAT=json
ENTRYPOINT []
