# syntax=docker/dockerfile:1
# The `tributary` image: one binary that runs every service (ingest, parser,
# api, coordinator, producers, fleet supervisor) by subcommand, plus
# `tributary-worker`, the fleet's default worker. Multi-stage: the toolchain
# stays in the build stage; the runtime image holds the two binaries and CA
# roots.

# Without a registry or a toolchain in the image: build on the host
# (`cargo build --release --bin tributary --bin tributary-worker`), then
#   docker build --target prebuilt -t tributary:latest .
# This stage comes first because Docker's legacy builder (no BuildKit) builds
# every stage before the target; .dockerignore lets the two binaries in.
FROM debian:bookworm-slim AS prebuilt
COPY target/release/tributary target/release/tributary-worker /usr/local/bin/
RUN useradd --system --uid 10001 --create-home --home-dir /home/tributary tributary
USER 10001
WORKDIR /home/tributary
EXPOSE 8080
ENTRYPOINT ["tributary"]
CMD ["up", "--listen", "0.0.0.0:8080"]

FROM rust:1.95-slim-bookworm AS build
# make: jemalloc (tikv-jemalloc-sys) is built from source with configure and
# make; gcc, which SQLite needs too, comes with the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build directory between builds; the
# binary is copied out because the cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tributary --bin tributary-worker \
    && install -D -t /out target/release/tributary target/release/tributary-worker

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/tributary tributary
COPY --from=build /out/tributary /out/tributary-worker /usr/local/bin/
USER 10001
WORKDIR /home/tributary
# The embedded mesh's one port; the distributed services listen on 50051
# (ingest), 50052 (api), 50053 (parser health) and 50054 (coordinator).
EXPOSE 8080
ENTRYPOINT ["tributary"]
CMD ["up", "--listen", "0.0.0.0:8080"]
