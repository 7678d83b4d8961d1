#!/usr/bin/env bash
# The test command: every unit and integration test, with real git.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --locked "$@"
