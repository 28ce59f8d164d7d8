#!/usr/bin/env bash
# The single test command: formatting, lints and the whole test suite.
# CI's .ci/run calls only this.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR=never
fi

step() { printf '==> %s\n' "$*"; }
# Runs a phase and prints what it cost, so the suite's budget stays visible.
timed() {
    local start=$SECONDS
    "$@"
    printf '    (%s: %d s)\n' "$*" $((SECONDS - start))
}

step "tools (target/tools/venv)"
# Exports TRIBUTARY_GRPCURL, TRIBUTARY_PYTHON, TRIBUTARY_ENVOY,
# TRIBUTARY_COMPOSE and TRIBUTARY_PROMTOOL (the metrics and alert-rule
# checker); defines tributary_ensure_services.
source scripts/tools.sh
printf '    %s\n' "TRIBUTARY_PYTHON=$TRIBUTARY_PYTHON" "TRIBUTARY_GRPCURL=$TRIBUTARY_GRPCURL" \
    "TRIBUTARY_ENVOY=$TRIBUTARY_ENVOY" "TRIBUTARY_COMPOSE=$TRIBUTARY_COMPOSE" \
    "TRIBUTARY_PROMTOOL=$TRIBUTARY_PROMTOOL" "TRIBUTARY_SCHEMATHESIS=$TRIBUTARY_SCHEMATHESIS"

step "services (PostgreSQL 127.0.0.1:5432, NATS JetStream 127.0.0.1:4222)"
tributary_ensure_services

step "browser (Debian chromium, playwright-core in tests/browser)"
scripts/browser.sh

step "python client (pip install ./clients/python into a fresh target/python-venv, its pytest suite)"
# The Rust integration tests drive the client's examples with this python
# (python_client.rs). A variable of its own: TRIBUTARY_PYTHON is the tools'
# venv, which other tests need.
start=$SECONDS
TRIBUTARY_CLIENT_PYTHON="$(scripts/python-client.sh)"
export TRIBUTARY_CLIENT_PYTHON
printf '    %s\n' "TRIBUTARY_CLIENT_PYTHON=$TRIBUTARY_CLIENT_PYTHON"
printf '    (scripts/python-client.sh: %d s)\n' $((SECONDS - start))

step "release build (the README's run command, tested from a fresh clone)"
# `cargo run --release -- up` in a clone that shares this target directory
# then finds everything built (first_run::the_readme_run_command_...).
timed cargo build --release --locked

step "offline images (debootstrap base, stand-ins for nats, postgres, envoy, OTLP)"
# Reused when present; the compose test (compose_stack) swaps this build's
# own binaries into tributary:latest.
timed scripts/offline-images.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run"
    cargo nextest run --workspace --locked --no-fail-fast
else
    step "cargo test (cargo-nextest not found)"
    cargo test --workspace --locked --no-fail-fast
fi

step "fuzz targets (corpus replay, then ${TRIBUTARY_FUZZ_SECONDS:-20} s each; docs/fuzzing.md)"
# Installs cargo-fuzz when missing; a crash or failed oracle fails the suite.
timed scripts/fuzz.sh "${TRIBUTARY_FUZZ_SECONDS:-20}"
