#!/usr/bin/env bash
# Make the stock git-lfs client (Debian package `git-lfs`) available: tests of
# the HTTP archive and the benchmark compare against it. Does nothing when it
# is already on PATH.
set -euo pipefail
if command -v git-lfs >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-git-lfs.sh: git-lfs is not installed and there is no apt-get; install git-lfs yourself" >&2
    exit 1
fi
sudo=
if [ "$(id -u)" != 0 ]; then
    sudo=sudo
fi
echo "install-git-lfs.sh: installing git-lfs (Debian package)..." >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q git-lfs >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q git-lfs >/dev/null
}
git-lfs version >&2
