#!/usr/bin/env bash
# The index formats at scale: loading, looking up, adding and saving with
# 100,000 entries (or ENTRIES) in CSV, JSON and SQLite. Self-contained: needs
# only Rust. Prints a Markdown table, as in the README.
#
#   bench/index.sh [ENTRIES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release --locked --example index_bench -- "$@"
