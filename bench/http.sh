#!/usr/bin/env bash
# Benchmark: push and clone of the standard workload (one 200 MiB random file
# and 2000 files of 1-10 KiB) through `fcache serve`, fcache's client against
# the stock git-lfs client on the same server. One command:
#
#     bench/http.sh            # RUNS=3 bench/http.sh for the median of 3
#
# Prints a Markdown table of wall-clock seconds and the git-lfs/fcache ratio.
# Each client gets a fresh server, HOME and cache, so every push uploads
# everything and every clone downloads everything.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
root=$PWD
runs=${RUNS:-1}
big_mib=${BIG_MIB:-200}
small_files=${SMALL_FILES:-2000}

cargo build --release --locked -q
scripts/install-git-lfs.sh >/dev/null 2>&1 || scripts/install-git-lfs.sh
fcache_bin=$root/target/release/fcache

work=$(mktemp -d "${TMPDIR:-/tmp}/fcache-bench-http.XXXXXX")
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

export GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com \
    GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com FCACHE_NO_PROGRESS=1
export PATH=$root/target/release:$PATH

# The workload, made once.
python3 - "$work/data" "$big_mib" "$small_files" <<'PY'
import os, random, sys
out, big_mib, small_files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
os.makedirs(os.path.join(out, "small"))
with open(os.path.join(out, "big.bin"), "wb") as f:
    for _ in range(big_mib):
        f.write(os.urandom(1 << 20))
for i in range(small_files):
    with open(os.path.join(out, "small", f"f{i:04}.bin"), "wb") as f:
        f.write(os.urandom(rng.randint(1024, 10240)))
PY

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

start_server() { # $1: archive directory; sets server_pid and url
    "$fcache_bin" serve --root "$1" --listen 127.0.0.1:0 2>"$1.log" &
    server_pid=$!
    for _ in $(seq 200); do
        url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$1.log" | head -1 || true)
        [ -n "$url" ] && return 0
        sleep 0.05
    done
    echo "bench: server did not start: $(cat "$1.log")" >&2
    exit 1
}

stop_server() {
    kill "$server_pid"
    wait "$server_pid" || true
    server_pid=
}

# One run for one client: prints "push clone lazy-clone+pull" seconds.
run_client() { # $1: fcache | git-lfs, $2: run directory, $3: run number
    local client=$1 dir=$2 i=$3
    mkdir -p "$dir"
    start_server "$dir/archive"
    local author=$dir/author reader=$dir/reader lazy=$dir/lazy
    mkdir -p "$author" "$reader" "$lazy"
    git init -q --bare --initial-branch=main "$dir/remote.git"
    (
        export HOME=$author FCACHE_CACHE_DIR=$author/cache FCACHE_ARCHIVE=$url
        git config --global init.defaultBranch main
        git init -q "$dir/repo"
        cd "$dir/repo"
        if [ "$client" = fcache ]; then
            fcache install >/dev/null
            fcache track '*.bin' >/dev/null
        else
            git lfs install >/dev/null
            git lfs track '*.bin' >/dev/null
            git config lfs.url "$url"
            git config lfs.locksverify false
        fi
        cp -r "$work/data/." .
        git add . && git commit -q -m data
        git remote add origin "$dir/remote.git"
    )
    local t0 t1 t2 t3 t4
    t0=$(now)
    (
        export HOME=$author FCACHE_CACHE_DIR=$author/cache FCACHE_ARCHIVE=$url
        cd "$dir/repo" && git push -q origin main
    )
    t1=$(now)
    for who in reader lazy; do
        (
            export HOME=$dir/$who
            cd "$HOME"
            git config --global init.defaultBranch main
            if [ "$client" = fcache ]; then fcache install >/dev/null; else git lfs install >/dev/null; fi
            git config --global lfs.locksverify false
        )
    done
    t2=$(now)
    (
        export HOME=$reader FCACHE_CACHE_DIR=$reader/cache FCACHE_ARCHIVE=$url
        cd "$HOME"
        git clone -q -c "lfs.url=$url" "$dir/remote.git" "$dir/clone"
    )
    t3=$(now)
    # Clone without downloads, then the transfer alone (fetch into the
    # cache / .git/lfs), then markers to files (checkout).
    local t5 t6
    (
        export HOME=$lazy FCACHE_CACHE_DIR=$lazy/cache FCACHE_ARCHIVE=$url
        cd "$HOME"
        if [ "$client" = fcache ]; then
            FCACHE_SKIP_SMUDGE=1 git clone -q "$dir/remote.git" "$dir/lazy-clone"
        else
            GIT_LFS_SKIP_SMUDGE=1 git clone -q -c "lfs.url=$url" "$dir/remote.git" "$dir/lazy-clone"
        fi
    )
    t4=$(now)
    (
        export HOME=$lazy FCACHE_CACHE_DIR=$lazy/cache FCACHE_ARCHIVE=$url
        cd "$dir/lazy-clone"
        if [ "$client" = fcache ]; then fcache fetch; else git lfs fetch; fi
    )
    t5=$(now)
    (
        export HOME=$lazy FCACHE_CACHE_DIR=$lazy/cache FCACHE_ARCHIVE=$url
        cd "$dir/lazy-clone"
        if [ "$client" = fcache ]; then fcache checkout; else git lfs checkout; fi
    )
    t6=$(now)
    cmp "$work/data/big.bin" "$dir/clone/big.bin"
    cmp "$work/data/big.bin" "$dir/lazy-clone/big.bin"
    diff -r "$work/data/small" "$dir/clone/small" >/dev/null
    diff -r "$work/data/small" "$dir/lazy-clone/small" >/dev/null
    stop_server
    echo "$i $(elapsed "$t0" "$t1") $(elapsed "$t4" "$t5") $(elapsed "$t5" "$t6") $(elapsed "$t2" "$t3")" >>"$work/$client.times"
    # Only the large files go now (page cache, disk). Deleting thousands of
    # small ones would slow file creation in the next runs for a while
    # (ext4 passes over recently freed inodes), and that would be measured
    # as the next client's time; they go with $work at the end.
    find "$dir" -type f -size +1M -delete
}

# Both clients in each run, back to back, alternating which goes first, so
# that the machine's drift over the runs weighs on both alike.
for i in $(seq "$runs"); do
    order="fcache git-lfs"
    if [ $((i % 2)) -eq 0 ]; then order="git-lfs fcache"; fi
    for client in $order; do
        echo "bench: $client run $i/$runs..." >&2
        run_client "$client" "$work/$client-$i" "$i" >&2
        echo "bench: $client run $i: push fetch checkout clone: $(tail -1 "$work/$client.times")" >&2
    done
done

python3 - "$work/fcache.times" "$work/git-lfs.times" "$runs" "$big_mib" "$small_files" <<'PY'
import statistics, sys, platform, subprocess, datetime
def rows(path):
    # run number -> the run's seconds per step
    return {r.split()[0]: list(map(float, r.split()[1:])) for r in open(path) if r.strip()}
fc, gl, runs, big_mib, small_files = sys.argv[1:6]
cpu = "?"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip(); break
except OSError:
    pass
import os
lfs = subprocess.run(["git-lfs", "version"], capture_output=True, text=True).stdout.strip()
print(f"Machine: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}; {lfs}; "
      f"{datetime.date.today()}; {runs} run(s), clients alternating; workload: one {big_mib} MiB file "
      f"and {small_files} files of 1-10 KiB\n")
print("Times are medians; the ratio is the median of the runs' ratios (each run times both clients back to back).\n")
print("| through `fcache serve` (seconds) | fcache | git-lfs | git-lfs / fcache |")
print("| --- | --- | --- | --- |")
for k, name in enumerate(["push (`git push`; the pre-push hook uploads)",
                          "fetch after a clone without smudge (`fcache fetch` / `git lfs fetch`)",
                          "then checkout (`fcache checkout` / `git lfs checkout`)",
                          "plain `git clone` (the smudge filter downloads)"]):
    f, g = rows(fc), rows(gl)
    a = statistics.median(r[k] for r in f.values())
    b = statistics.median(r[k] for r in g.values())
    ratio = statistics.median(g[i][k] / f[i][k] for i in f)
    print(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.2f}x |")
PY
