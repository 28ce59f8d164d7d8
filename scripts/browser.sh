#!/usr/bin/env bash
# The dashboard's browser test needs Debian's Chromium and playwright-core
# (tests/browser, pinned by its package-lock.json). Installs what is missing;
# a second run with both in place does no network work.
#
# playwright-core drives the system Chromium at /usr/bin/chromium; it never
# downloads a browser of its own (no `playwright install`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'browser.sh: %s\n' "$*" >&2; }

if [[ ! -x /usr/bin/chromium ]]; then
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then sudo=(sudo); fi
    log "installing Debian's chromium"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
/usr/bin/chromium --version >/dev/null 2>&1 || { log "ERROR: /usr/bin/chromium does not run"; exit 1; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "ERROR: Node.js and npm are needed for the browser test (node >= 20)"
    exit 1
fi

# npm ci again only when the lock file changed since the last install.
dir=tests/browser
stamp="$dir/node_modules/.tributary-stamp"
want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1) node=$(node --version)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s' "$want" >"$stamp"
fi
(cd "$dir" && node -e 'import("playwright-core").then(() => {})') \
    || { log "ERROR: playwright-core does not load in $dir"; exit 1; }
