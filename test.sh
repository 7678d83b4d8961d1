#!/usr/bin/env bash
# The test command: every unit and integration test, with real git, the
# stock git-lfs client, a third-party Git LFS server (giftless), and the S3
# archive's tests against a real S3 engine (SeaweedFS, started and stopped
# here by scripts/s3-test-server.sh; plain `cargo test` skips them, visibly).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-git-lfs.sh
scripts/install-giftless.sh >/dev/null
scripts/s3-test-server.sh start
trap 'scripts/s3-test-server.sh stop' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
eval "$(scripts/s3-test-server.sh env)"
cargo test --locked "$@"
# The benchmark against git-lfs, tiny and once, so that it keeps working
# (the full run is bench/run.sh). Skipped when running only some tests.
if [ $# -eq 0 ]; then
    FCACHE_BENCH_BINARY=target/debug/fcache bench/run.sh --smoke
fi
