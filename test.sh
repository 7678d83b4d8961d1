#!/usr/bin/env bash
# The test command: every unit and integration test, with real git.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --locked "$@"
# The benchmark against git-lfs, tiny and once, so that it keeps working
# (the full run is bench/run.sh). Skipped when running only some tests.
if [ $# -eq 0 ]; then
    FCACHE_BENCH_BINARY=target/debug/fcache bench/run.sh --smoke
fi
