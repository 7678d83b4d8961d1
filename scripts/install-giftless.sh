#!/usr/bin/env bash
# Install giftless (a Git LFS server written in Python, from PyPI) into a
# virtualenv under target/, for the tests of fcache's HTTP archive against a
# Git LFS server written by others. Cached: a second run does nothing.
# Prints the venv's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FCACHE_GIFTLESS_VENV:-$PWD/target/giftless-venv}
stamp=$venv/.fcache-installed-v1
if [ -f "$stamp" ]; then
    echo "$venv"
    exit 0
fi
echo "install-giftless.sh: installing giftless into $venv..." >&2
rm -rf "$venv"
python3 -m venv "$venv"
# giftless 0.6.2 on PyPI declares no dependencies; these are the ones its
# local-storage server needs (versions from its requirements/main.txt), plus
# waitress, a pure-Python WSGI server.
"$venv/bin/pip" install -q --disable-pip-version-check \
    "giftless==0.6.2" "figcan==0.0.4" "flask==2.3.3" "flask-marshmallow==0.15.0" \
    "marshmallow==3.21.1" "pyyaml==6.0.1" "pyjwt==2.8.0" "webargs==8.4.0" \
    "typing-extensions==4.10.0" "python-dotenv==1.0.1" "python-dateutil==2.9.0.post0" \
    "flask-classful==0.16.0" "werkzeug==3.0.3" "cachetools==5.3.3" \
    "importlib-metadata==7.0.2" "waitress==3.0.2" >&2
"$venv/bin/python" -c "import giftless.wsgi_entrypoint" 2>/dev/null || {
    echo "install-giftless.sh: giftless does not import" >&2
    exit 1
}
touch "$stamp"
echo "$venv"
