#!/usr/bin/env bash
# The test command: every unit and integration test, with real git, the
# stock git-lfs client and a third-party Git LFS server (giftless).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-git-lfs.sh
scripts/install-giftless.sh >/dev/null
cargo test --locked "$@"
