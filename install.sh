#!/usr/bin/env bash
# Build fcache from this checkout, install the binary, and configure git to
# use it. Needs only the Rust toolchain and git. Running it again is harmless:
# it rebuilds, replaces the binary, and re-applies the same git config.
#
#   FCACHE_INSTALL_DIR   where the binary goes (default: ~/.cargo/bin when it
#                        exists, else ~/.local/bin)
set -euo pipefail

src=$(cd "$(dirname "$0")" && pwd)
for tool in cargo git; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "install.sh: '$tool' is not on PATH; install it first (Rust: https://rustup.rs)" >&2
        exit 1
    }
done

if [ -n "${FCACHE_INSTALL_DIR:-}" ]; then
    dest=$FCACHE_INSTALL_DIR
elif [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
    dest=${CARGO_HOME:-$HOME/.cargo}/bin
else
    dest=$HOME/.local/bin
fi

echo "install.sh: building fcache (release)..."
cargo build --release --locked --manifest-path "$src/Cargo.toml"

mkdir -p "$dest"
# Copy then rename, so a running fcache is never replaced half-written.
cp "$src/target/release/fcache" "$dest/.fcache.new.$$"
chmod 755 "$dest/.fcache.new.$$"
mv -f "$dest/.fcache.new.$$" "$dest/fcache"
echo "install.sh: installed $dest/fcache"

case ":$PATH:" in
    *":$dest:"*) ;;
    *) echo "install.sh: warning: $dest is not on your PATH; add it, e.g. export PATH=\"$dest:\$PATH\"" >&2 ;;
esac

# Configure the filter in the user's global git config. Run from outside any
# repository so that this checkout of fcache itself gets no hooks.
(cd / && "$dest/fcache" install)
echo "install.sh: done. In a repository: fcache install && fcache track '*.csv'"
