#!/usr/bin/env bash
# The Python client (clients/python): installs it as a user would, with
# `pip install ./clients/python` into a fresh venv (its stubs are generated
# from proto/ while it builds), runs its pytest suite there, and prints the
# venv's python path as the only line on stdout, for the Rust integration
# tests (TRIBUTARY_CLIENT_PYTHON). Everything else goes to stderr.
#
# The venv is target/python-venv (under CARGO_TARGET_DIR when set), made
# afresh on every run so that a missing dependency or a stale generated stub
# cannot hide. Needs python3 (3.11 or later) and PyPI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'python-client.sh: %s\n' "$*" >&2; }

# pytest is the suite's only extra; pinned like the test tools.
PYTEST='pytest==9.2.0'

target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
venv="$(cd "$target" && pwd)/python-venv"

log "creating $venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
    ./clients/python "$PYTEST" >&2

log "pytest clients/python/tests"
# Run from the repository root, so that the installed package (with its
# generated stubs) is imported, never the source folder (without them).
"$venv/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests >&2

printf '%s\n' "$venv/bin/python"
