#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo fuzz with libFuzzer) and runs each:
# first its committed corpus (fuzz/corpus/TARGET, every input replayed),
# then new inputs for SECONDS seconds. A crash, a failed assertion, a leak
# of time (-timeout) or memory (-rss_limit_mb) ends the run non-zero.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   default: 20 s, every target
#
# New inputs go to target/fuzz-corpus/TARGET, never into the committed
# corpus; `cargo fuzz cmin` folds a long run's finds back (docs/fuzzing.md).
# cargo-fuzz is installed into ~/.cargo/bin when missing (about 3 min).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-20}"
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi

# `--sanitizer none`: libFuzzer's coverage guidance works on the stable
# toolchain; AddressSanitizer would need a nightly one (or
# RUSTC_BOOTSTRAP=1), and the targets are safe Rust.
cargo fuzz build --sanitizer none --debug-assertions

mkdir -p target/fuzz-logs
for target in "${targets[@]}"; do
    scratch="target/fuzz-corpus/$target"
    log="target/fuzz-logs/$target.log"
    mkdir -p "$scratch" "fuzz/corpus/$target"
    echo "fuzz.sh: $target: corpus replay, then ${seconds} s (log: $log)"
    if ! cargo fuzz run --sanitizer none --debug-assertions "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz.sh: $target FAILED; the input is in fuzz/artifacts/$target" >&2
        exit 1
    fi
    grep -E '^(INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" \
        | sed 's/^/    /' || true
done
