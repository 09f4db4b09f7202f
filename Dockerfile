# Floodgate: build with the Rust toolchain (and cmake, which Pingora's zlib
# build needs), run on a slim image as a non-root user.
#   docker build -t floodgate .
#   docker run -v $PWD/conf/docker.toml:/etc/floodgate/floodgate.toml:ro -p 8080:8080 floodgate
# The rustc that wrote pgo/floodgate.profdata (pgo/rustc-version): the
# profile fits only its builds (scripts/rustc-pgo).
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The linker wrapper that packs the hot functions (scripts/ordered-cc),
# and the rustc wrapper that builds with the profile in pgo/
# (scripts/rustc-pgo: profile-guided optimization).
COPY .cargo ./.cargo
COPY scripts/ordered-cc scripts/rustc-pgo ./scripts/
COPY pgo ./pgo
COPY vendor ./vendor
COPY proto ./proto
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tools ./tools
RUN cargo build --release --bin floodgate --bin floodgate-demo

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/floodgate --create-home floodgate
COPY --from=build /src/target/release/floodgate /usr/local/bin/floodgate
# The demo upstream of the docker-compose stack (not needed in production).
COPY --from=build /src/target/release/floodgate-demo /usr/local/bin/floodgate-demo
# The config lives here; mount your own over it.
COPY conf/floodgate.toml /etc/floodgate/floodgate.toml
USER floodgate
WORKDIR /var/lib/floodgate
EXPOSE 8080 9091 9092
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["floodgate", "health", "--admin", "127.0.0.1:9091"]
ENTRYPOINT ["floodgate"]
CMD ["--conf", "/etc/floodgate/floodgate.toml"]
