"""`make profile`: where a worker's loop spends a drain of packed no-op jobs (issue 20).

Starts a SeaweedFS of its own, puts BENCH_PROFILE_JOBS packed no-op jobs (put_many) under a fresh
prefix and drains them with ``bench.worker_child drain`` under py-spy (``-r 200 -f raw --idle
--threads --nolineno``)::

    py-spy record ... -o FILE -- python -m bench.worker_child drain --url URL --db DB ...

then prints the functions that hold the most of the loop thread's samples (the main thread:
``Worker.run``), inclusive and self, and the drain's jobs/s. ``--idle`` keeps the samples in
which the loop waits (for a handler thread, for the I/O pool), so the shares add up to the
loop's wall time. First, unless BENCH_PROFILE_PLAIN=0, the same drain without the profiler
(py-spy pauses the process at every sample) gives the jobs/s and the worker's CPU seconds.

Knobs: BENCH_PROFILE_JOBS (10,000), BENCH_PROFILE_CONCURRENCY (1), BENCH_PROFILE_RUNS (1),
BENCH_PROFILE_PLAIN (1), BENCH_PROFILE_NONBLOCKING (0: 1 samples without pausing the worker,
cheaper but less exact), BENCH_PROFILE_CODE: the checkout whose qlite the worker runs (default
this one), to profile an older commit with the same script, e.g. after
``git worktree add /tmp/before COMMIT``. Raw profiles go to bench/profiles/ (not in git).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from .s3cases import put_many, url
from .servers import start_seaweedfs
from .stats import knob

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "profiles"
RATE = 200  # samples per second
TOP_INCLUSIVE = 12
TOP_SELF = 8
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[profile {time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def py_spy() -> str:
    """The py-spy next to this Python (the bench extra installs it), else one on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        sys.exit("python -m bench.profile: py-spy is not installed. "
                 "Try: .venv/bin/pip install -e '.[dev,bench]' (or make profile)")
    return found


def child_env(code: Path) -> dict[str, str]:
    """The worker child imports qlite (and bench) from ``code`` first: it runs in a scratch
    directory, so this checkout's files do not shadow it."""
    path = [str(code), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def which_qlite(env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", "import qlite; print(qlite.__file__)"],
                          env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def revision(code: Path) -> str:
    proc = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def last_json(stdout: str) -> dict:
    """The worker child's JSON line (py-spy writes its own lines around it)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line from the worker child:\n{stdout[-3000:]}")


def drain(n: int, concurrency: int, tmp: Path, env: dict[str, str],
          profile: Path | None) -> dict:
    """put_many n packed no-op jobs into a fresh prefix, then one worker child drains them
    (under py-spy when ``profile`` is a file to write)."""
    name = f"profile-c{concurrency}-{uuid.uuid4().hex[:8]}"
    put_many(name, n)
    child = [sys.executable, "-m", "bench.worker_child", "drain", "--url", url(name),
             "--db", str(tmp / f"{name}.db"), "--concurrency", str(concurrency)]
    command = child if profile is None else [
        py_spy(), "record", "-r", str(RATE), "-f", "raw", "--idle", "--threads", "--nolineno",
        *(["--nonblocking"] if knob("BENCH_PROFILE_NONBLOCKING", 0) else []),
        "-o", str(profile), "--", *child]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True,
                          timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
    out = last_json(proc.stdout)
    done = out["counts"].get("succeeded", 0)
    if done != n:
        raise RuntimeError(f"drain: {done} of {n} jobs succeeded: {out['counts']}")
    sampled = [line for line in proc.stdout.splitlines() if "Samples:" in line]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"jobs_s": n / out["elapsed"], "elapsed": out["elapsed"],
            "cpu_s": cpu if profile is None else None,
            "requests_per_job": sum(out["requests"].values()) / n,
            "py_spy": sampled[-1].split("Samples:", 1)[-1].strip() if sampled else ""}


LOOP = "Worker.run (qlite/worker/loop.py)"


def loop_stacks(raw: str) -> tuple[Counter[tuple[str, ...]], int]:
    """The loop's stacks (below ``Worker.run`` on the main thread, root first) and their
    sample counts, from py-spy's raw output: ``thread (TID): NAME;frame;...;frame COUNT``
    (NAME is missing before threading is imported); also the main thread's samples."""
    stacks: Counter[tuple[str, ...]] = Counter()
    main = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        if not count.isdigit() or not thread.endswith(": MainThread"):
            continue
        main += int(count)
        if LOOP in frames:
            stacks[tuple(frames[frames.index(LOOP) + 1:])] += int(count)
    return stacks, main


def shares(stacks: Counter[tuple[str, ...]]) -> tuple[list[tuple[str, float]],
                                                        list[tuple[str, float]], list[str], int]:
    """Inclusive and self shares of the loop's samples, by function. The inclusive list leaves
    out the frames in (nearly) every sample (Worker._step) and shows a chain of calls that are
    always on the stack together (``Worker._poll > ... > Ingest._queue``) as one row."""
    total = sum(stacks.values())
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    seen_in: dict[str, set[tuple[str, ...]]] = {}
    for frames, count in stacks.items():
        for frame in set(frames):
            inclusive[frame] += count
            seen_in.setdefault(frame, set()).add(frames)
        own[frames[-1] if frames else LOOP] += count
    everywhere = [f for f, c in inclusive.items() if c >= 0.99 * total]
    chains: dict[frozenset, list[str]] = {}
    for frame, _ in inclusive.most_common():
        if frame not in everywhere:
            chains.setdefault(frozenset(seen_in[frame]), []).append(frame)
    inc = []
    for members in chains.values():
        order = next(iter(seen_in[members[0]]))
        members.sort(key=order.index)
        label = members[0] if len(members) == 1 else (
            f"{members[0].split(' (')[0]} > {'... > ' if len(members) > 2 else ''}{members[-1]}")
        inc.append((label, inclusive[members[0]] / total))
    return inc, [(f, c / total) for f, c in own.most_common()], everywhere, total


WAITS = (".wait (", "select (", "readinto (", ".acquire (", ".get (queue.py)")


def kind(frames: tuple[str, ...]) -> str:
    """Where a loop sample was: in an S3 request, waiting (for a handler thread or the I/O
    pool), in the index's SQL (sqlite3's C time is charged to the Python frame that called
    it: py-spy without --native), or in other Python."""
    if any("(qlite/store.py)" in f for f in frames):
        return "S3 requests on the loop (start check, LIST, DeleteObjects)"
    leaf = frames[-1] if frames else LOOP
    if any(w in leaf for w in WAITS):
        return "waiting (handler threads, I/O pool, Litestream)"
    if "(qlite/index/db.py)" in leaf:
        return "SQLite (qlite/index/db.py: statements, commits, fetches)"
    return "other Python"


def table(title: str, rows: list[tuple[str, float]], top: int) -> str:
    lines = [title] + [f"  {share * 100:5.1f} %  {frame}" for frame, share in rows[:top]]
    return "\n".join(lines)


def report(path: Path) -> str:
    stacks, main = loop_stacks(path.read_text())
    if not stacks:
        return f"{path}: no samples of the loop (did py-spy attach?)"
    inc, own, everywhere, total = shares(stacks)
    deepest = max(stacks, key=lambda frames: stacks[frames])
    inside = next((f for f in reversed(deepest) if f in everywhere), "-")
    return "\n".join([
        f"the loop: {total:,} samples below {LOOP} of {main:,} of the main thread "
        "(idle included)" + (f"; in (nearly) every one: {inside}" if everywhere else ""),
        table(f"top {TOP_INCLUSIVE} by inclusive share of the loop's samples:", inc,
              TOP_INCLUSIVE),
        table(f"top {TOP_SELF} by self share:", own, TOP_SELF),
        table("by kind:", by_kind(stacks), 4)])


def by_kind(stacks: Counter[tuple[str, ...]]) -> list[tuple[str, float]]:
    total = sum(stacks.values())
    kinds: Counter[str] = Counter()
    for frames, count in stacks.items():
        kinds[kind(frames)] += count
    return [(k, c / total) for k, c in kinds.most_common()]


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n = knob("BENCH_PROFILE_JOBS", 10_000)
    concurrency = knob("BENCH_PROFILE_CONCURRENCY", 1)
    runs = knob("BENCH_PROFILE_RUNS", 1)
    plain = knob("BENCH_PROFILE_PLAIN", 1)
    code = Path(os.environ.get("BENCH_PROFILE_CODE") or ROOT).resolve()
    py_spy()
    OUT.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="qlite-profile-"))
    rev = revision(code)
    say(f"worker code: {which_qlite(child_env(code), tmp)} (commit {rev})")
    with contextlib.ExitStack() as stack:
        say(f"starting SeaweedFS (data in {tmp})")
        seaweed = start_seaweedfs(tmp / "seaweedfs")
        stack.callback(seaweed.stop)
        for k in [k for k in os.environ if k.startswith(("AWS_", "QLITE_"))]:
            if k != "AWS_CA_BUNDLE":  # point qlite and boto3 at our SeaweedFS only
                del os.environ[k]
        os.environ.update({**seaweed.env(), "QLITE_LOG_LEVEL": "WARNING"})
        env = child_env(code)
        for r in range(1, runs + 1):
            if plain:
                say(f"run {r}: drain of {n:,} packed jobs, concurrency {concurrency}, "
                    "no profiler")
                out = drain(n, concurrency, tmp, env, None)
                print(f"run {r}, {rev}, c={concurrency}, no profiler: {out['jobs_s']:,.0f} "
                      f"jobs/s ({out['elapsed']:.2f} s, worker CPU {out['cpu_s']:.2f} s, "
                      f"S3 requests per job {out['requests_per_job']:.4f})",
                      flush=True)
            path = OUT / f"drain-c{concurrency}-{rev}-{time.strftime('%H%M%S')}.txt"
            say(f"run {r}: drain of {n:,} packed jobs, concurrency {concurrency}, "
                f"under py-spy -r {RATE}")
            out = drain(n, concurrency, tmp, env, path)
            print(f"run {r}, {rev}, c={concurrency}, under py-spy: {out['jobs_s']:,.0f} jobs/s "
                  f"({out['elapsed']:.2f} s; py-spy samples {out['py_spy']}); raw profile "
                  f"{path.relative_to(ROOT)}", flush=True)
            print(report(path), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
