#!/usr/bin/env bash
# The benchmark against git-lfs, in one command:
#   bench/run.sh                # full run: 200 MiB + 2000 small files, 5 rounds
#   bench/run.sh --rounds 3     # fewer rounds
#   bench/run.sh --smoke        # tiny workload, one round (what ./test.sh runs)
# Builds fcache in release mode and installs git-lfs (Debian package) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-git-lfs.sh
fcache=${FCACHE_BENCH_BINARY:-}
if [ -z "$fcache" ]; then
    cargo build --release --locked --quiet
    fcache=target/release/fcache
fi
exec python3 bench/bench.py --fcache "$fcache" "$@"
