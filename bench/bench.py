#!/usr/bin/env python3
"""fcache against git-lfs, step by step, as a user feels it.

Each round runs every step for both tools, alternating which goes first, in
fresh directories with an empty HOME. Reported: the median wall time of each
step per tool, the ratio git-lfs/fcache, the peak resident memory of fcache's
own processes (not git's) and, for reference, the machine's raw SHA-256
throughput.

To add a step, append a `Step` to `STEPS` (and, for a tool with something
special to do, a method on its `Tool` subclass); to add a tool, subclass
`Tool`. Run through bench/run.sh, which builds fcache and installs git-lfs.
"""

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

MIB = 1 << 20


# ---------------------------------------------------------------- workload

@dataclass
class Workload:
    big_size: int
    small_count: int
    small_min: int
    small_max: int
    dir: str = ""

    def describe(self) -> str:
        return (f"one {self.big_size // MIB} MiB random file plus {self.small_count} "
                f"random files of {self.small_min // 1024}-{self.small_max // 1024} KiB")

    def generate(self, root: str) -> None:
        self.dir = os.path.join(root, "workload")
        os.makedirs(os.path.join(self.dir, "small"))
        rng = __import__("random").Random(42)
        with open(os.path.join(self.dir, "big.bin"), "wb") as f:
            left = self.big_size
            while left:
                n = min(left, 8 * MIB)
                f.write(os.urandom(n))
                left -= n
        for i in range(self.small_count):
            size = rng.randint(self.small_min, self.small_max)
            with open(os.path.join(self.dir, "small", f"{i:05}.dat"), "wb") as f:
                f.write(os.urandom(size))


FULL = Workload(big_size=200 * MIB, small_count=2000, small_min=1024, small_max=10 * 1024)
SMOKE = Workload(big_size=2 * MIB, small_count=50, small_min=1024, small_max=10 * 1024)


# ---------------------------------------------------------------- tools

class Tool:
    """One contender: how to set up a user, a repository and a remote."""

    name = "?"

    def __init__(self, root: str, fcache: str):
        self.root = root
        self.fcache = fcache
        self.env_extra: dict = {}

    def env(self, home: str) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GIT_", "FCACHE_", "XDG_"))}
        env.update(
            HOME=home,
            GIT_CONFIG_NOSYSTEM="1",
            GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="bench@example.com",
            GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="bench@example.com",
            PATH=os.path.dirname(os.path.abspath(self.fcache)) + os.pathsep + os.environ["PATH"],
        )
        env.update(self.env_extra)
        return env

    def new_user(self, name: str) -> dict:
        home = os.path.join(self.root, f"home-{name}")
        os.makedirs(home)
        env = self.env(home)
        run(["git", "config", "--global", "init.defaultBranch", "main"], home, env)
        self.install(home, env)
        return env

    def install(self, cwd: str, env: dict) -> None:
        raise NotImplementedError

    def init_repo(self, repo: str, env: dict) -> None:
        raise NotImplementedError

    def peak_memory_kib(self) -> Optional[int]:
        return None

    def reset_peak_memory(self) -> None:
        pass


class Fcache(Tool):
    name = "fcache"

    def __init__(self, root: str, fcache: str):
        super().__init__(root, fcache)
        self.archive = os.path.join(root, "fcache-archive")
        self.peak_file = os.path.join(root, "fcache-peak")
        self.env_extra = {"FCACHE_ARCHIVE": self.archive,
                          "FCACHE_REPORT_PEAK_MEMORY": self.peak_file}

    def new_user(self, name: str) -> dict:
        # Every user starts with an empty cache of their own.
        self.env_extra["FCACHE_CACHE_DIR"] = os.path.join(self.root, f"fcache-cache-{name}")
        return super().new_user(name)

    def install(self, cwd, env):
        run(["fcache", "install"], cwd, env)

    def init_repo(self, repo, env):
        run(["fcache", "install"], repo, env)
        run(["fcache", "track", "*.bin", "*.dat"], repo, env)

    def reset_peak_memory(self):
        if os.path.exists(self.peak_file):
            os.remove(self.peak_file)

    def peak_memory_kib(self):
        # One line per fcache process the step started: "<command> <KiB>".
        try:
            with open(self.peak_file) as f:
                return max(int(line.split()[-1]) for line in f if line.strip())
        except (FileNotFoundError, ValueError):
            return None


class PlainGit(Tool):
    """git alone, no filter: the content goes into git itself. Not a
    contender; its times show the floor that git's own work (index, loose
    objects, work-tree files) sets for any filter."""

    name = "git alone"

    def install(self, cwd, env):
        pass

    def init_repo(self, repo, env):
        with open(os.path.join(repo, ".gitattributes"), "w") as f:
            f.write("*.bin -text\n*.dat -text\n")


class GitLfs(Tool):
    name = "git-lfs"

    def install(self, cwd, env):
        run(["git", "lfs", "install", "--skip-repo"], cwd, env)

    def init_repo(self, repo, env):
        run(["git", "lfs", "install", "--local"], repo, env)
        run(["git", "lfs", "track", "*.bin", "*.dat"], repo, env)


# ---------------------------------------------------------------- steps

@dataclass
class Ctx:
    tool: Tool
    workload: Workload
    dir: str
    env: dict = field(default_factory=dict)
    repo: str = ""
    remote: str = ""

    def git(self, *args, cwd=None):
        return run(["git", *args], cwd or self.repo, self.env)


def tracked_files(ctx: Ctx):
    out = ctx.git("ls-files", "-z")
    return [p for p in out.split("\0") if p and p != ".gitattributes"]


def setup(ctx: Ctx):
    ctx.env = ctx.tool.new_user("alice")
    ctx.repo = os.path.join(ctx.dir, "repo")
    run(["git", "init", "-q", ctx.repo], ctx.dir, ctx.env)
    ctx.tool.init_repo(ctx.repo, ctx.env)
    ctx.git("add", ".gitattributes")
    ctx.git("commit", "-q", "-m", "track")
    ctx.remote = os.path.join(ctx.dir, "remote.git")
    run(["git", "init", "-q", "--bare", ctx.remote], ctx.dir, ctx.env)
    # A file:// URL: git-lfs then uses its standalone file transfer into the
    # bare repository, the counterpart of fcache's directory archive.
    ctx.git("remote", "add", "origin", "file://" + ctx.remote)


def prepare_big(ctx):
    shutil.copyfile(os.path.join(ctx.workload.dir, "big.bin"), os.path.join(ctx.repo, "big.bin"))


def prepare_small(ctx):
    shutil.copytree(os.path.join(ctx.workload.dir, "small"), os.path.join(ctx.repo, "small"))


def prepare_touch(ctx):
    later = time.time() + 10
    for p in tracked_files(ctx):
        os.utime(os.path.join(ctx.repo, p), (later, later))


def check_status_clean(ctx):
    out = ctx.git("status", "--porcelain")
    if out.strip():
        raise SystemExit(f"{ctx.tool.name}: git status after touch is not clean:\n{out[:500]}")


def prepare_delete(ctx):
    # Moved out of the work tree rather than unlinked: for git the files are
    # gone all the same, and thousands of freed inodes would slow file
    # creation for a while after (ext4 skips recently freed inodes), which
    # would then be measured as some tool's time.
    trash = os.path.join(ctx.dir, "trash")
    os.makedirs(trash, exist_ok=True)
    for i, p in enumerate(tracked_files(ctx)):
        os.rename(os.path.join(ctx.repo, p), os.path.join(trash, str(i)))


def check_checkout(ctx):
    check_same(ctx, ctx.repo)


def prepare_clone(ctx):
    # Another user: an empty HOME and (for fcache) an empty cache.
    ctx.env = ctx.tool.new_user("bob")


def check_clone(ctx):
    check_same(ctx, os.path.join(ctx.dir, "clone"))


def check_same(ctx, where):
    for rel in ["big.bin", os.path.join("small", "00000.dat")]:
        with open(os.path.join(ctx.workload.dir, rel), "rb") as a, \
                open(os.path.join(where, rel), "rb") as b:
            if a.read() != b.read():
                raise SystemExit(f"{ctx.tool.name}: {rel} differs in {where}")


@dataclass
class Step:
    name: str
    command: Callable[[Ctx], list]
    prepare: Callable[[Ctx], None] = lambda ctx: None
    check: Callable[[Ctx], None] = lambda ctx: None
    # The ratio git-lfs/fcache this step should reach, if it has a target.
    target: Optional[float] = None
    cwd: Callable[[Ctx], str] = lambda ctx: ctx.repo


STEPS = [
    Step("git add (big file)", lambda c: ["git", "add", "big.bin"], prepare_big, target=3),
    Step("git add (small files)", lambda c: ["git", "add", "small"], prepare_small, target=2),
    Step("git commit", lambda c: ["git", "commit", "-q", "-m", "data"]),
    Step("git status (all touched)", lambda c: ["git", "status", "--porcelain"],
         prepare_touch, check_status_clean, target=5),
    Step("git push", lambda c: ["git", "push", "-q", "origin", "main"], target=2),
    Step("git checkout (from cache)", lambda c: ["git", "checkout", "--", "."],
         prepare_delete, check_checkout, target=2),
    Step("git clone (empty cache)",
         lambda c: ["git", "clone", "-q", "file://" + c.remote, "clone"],
         prepare_clone, check_clone, target=2, cwd=lambda c: c.dir),
]


# ---------------------------------------------------------------- running

def run(cmd, cwd, env):
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd} ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def one_round(tool_cls, root, fcache, workload, results, memory):
    rdir = tempfile.mkdtemp(prefix=f"{tool_cls.name}-", dir=root)
    tool = tool_cls(rdir, fcache)
    ctx = Ctx(tool=tool, workload=workload, dir=rdir)
    setup(ctx)
    for step in STEPS:
        step.prepare(ctx)
        subprocess.run(["sync"])
        tool.reset_peak_memory()
        start = time.perf_counter()
        run(step.command(ctx), step.cwd(ctx), ctx.env)
        elapsed = time.perf_counter() - start
        step.check(ctx)
        results.setdefault((tool.name, step.name), []).append(elapsed)
        print(f"  {tool.name}: {step.name}: {elapsed:.3f} s", file=sys.stderr, flush=True)
        kib = tool.peak_memory_kib()
        if kib is not None:
            memory.setdefault((tool.name, step.name), []).append(kib)
    drop_large_files(rdir)


def drop_large_files(rdir):
    """Free the round's large files, so later rounds do not run with the page
    cache full of them, but keep the small ones: deleting thousands of files
    slows file creation in the next rounds (ext4 skips recently freed
    inodes), and that would be measured as the tools' time. Everything goes
    at the end."""
    for dirpath, _, names in os.walk(rdir):
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                if os.lstat(p).st_size > MIB:
                    os.chmod(dirpath, 0o755)
                    os.remove(p)
            except OSError:
                pass


def sha256_throughput():
    """MiB/s of one core hashing SHA-256: openssl's figure where openssl is
    installed (it uses the CPU's SHA extensions), else Python's hashlib."""
    try:
        out = subprocess.run(["openssl", "speed", "-evp", "sha256", "-seconds", "2", "-bytes", str(MIB)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        kbytes = float(out.strip().splitlines()[-1].split()[-1].rstrip("k"))
        return kbytes * 1000 / MIB, "openssl speed -evp sha256"
    except (OSError, ValueError, IndexError):
        pass
    data = os.urandom(64 * MIB)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(4):
            hashlib.sha256(data).digest()
        best = max(best, 4 * 64 / (time.perf_counter() - start))
    return best, "Python hashlib"


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def version(cmd):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fcache", required=True, help="the fcache binary to measure")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny workload, one round: checks the benchmark runs")
    ap.add_argument("--workdir", help="where to work (default: a temporary directory)")
    args = ap.parse_args()
    workload = SMOKE if args.smoke else FULL
    rounds = 1 if args.smoke else args.rounds
    tools = [Fcache, GitLfs]
    reference = [] if args.smoke else [PlainGit]

    root = tempfile.mkdtemp(prefix="fcache-bench-", dir=args.workdir)
    try:
        workload.generate(root)
        results, memory = {}, {}
        for r in range(rounds):
            order = (tools if r % 2 == 0 else list(reversed(tools))) + reference
            for t in order:
                print(f"round {r + 1}/{rounds}: {t.name}", file=sys.stderr, flush=True)
                one_round(t, root, args.fcache, workload, results, memory)
        sha, sha_how = sha256_throughput()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"Workload: {workload.describe()}; {rounds} round(s), tools alternating; medians.")
    print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d')}; {version(['git', '--version'])}; "
          f"{version(['git', 'lfs', 'version'])}; {version([args.fcache, '--version'])}.")
    print(f"Raw SHA-256 throughput of one core ({sha_how}): {sha:.0f} MiB/s.")
    print()
    print("Times are medians; the ratio is the median of the rounds' ratios (each round runs both tools back to back).")
    print()
    print("| step | fcache (s) | git-lfs (s) | git-lfs/fcache | target | fcache peak memory | git alone, no filter (s) |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    missed = []
    for step in STEPS:
        fs_, gs = results[("fcache", step.name)], results[("git-lfs", step.name)]
        f, g = statistics.median(fs_), statistics.median(gs)
        ratio = statistics.median(b / a if a > 0 else float("inf") for a, b in zip(fs_, gs))
        target = "-"
        if step.target and not args.smoke:
            met = ratio >= step.target
            target = f"≥{step.target}× {'met' if met else 'MISSED'}"
            if not met:
                missed.append(step.name)
        mem = memory.get(("fcache", step.name))
        mem_s = f"{max(mem) / 1024:.1f} MiB" if mem else "-"
        if mem and max(mem) > 32 * 1024 and not args.smoke:
            missed.append(f"{step.name} (memory)")
        plain = results.get(("git alone", step.name))
        plain_s = f"{statistics.median(plain):.3f}" if plain else "-"
        print(f"| {step.name} | {f:.3f} | {g:.3f} | {ratio:.1f}× | {target} | {mem_s} | {plain_s} |")
    print()
    if args.smoke:
        print("Smoke run: targets are judged on the full workload only.")
    else:
        print("Targets missed: " + (", ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()
