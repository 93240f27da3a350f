"""A qlite worker in its own process, so that it neither shares the GIL with the benchmark's
producer nor inherits its memory. Prints one JSON object on stdout when done.

  drain --url URL --db PATH --concurrency C   run(burst=True); time it
  serve --url URL --db PATH --concurrency C   run until SIGTERM; prints "ready" first, and
                                              records when each inbox LIST happened; each
                                              "requests" line on stdin is answered with a
                                              JSON line of its S3 requests so far
  fill  --db PATH --n N --queue Q             insert N pending rows straight into the index
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sqlite3
import sys
import threading
import time

from qlite import envelope
from qlite.index.db import Index
from qlite.settings import Settings
from qlite.worker.loop import Worker

from .tasks import app


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which starts afresh at exec (unlike ru_maxrss,
    which Linux carries over from the parent that forked us)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3  # kB
    return float("nan")


def make_worker(args: argparse.Namespace) -> Worker:
    settings = Settings.load(url=args.url, db=args.db, concurrency=args.concurrency)
    return Worker(app, settings)


def drain(args: argparse.Namespace) -> dict:
    worker = make_worker(args)
    start = time.perf_counter()
    worker.run(burst=True)
    elapsed = time.perf_counter() - start
    counts = Index(args.db).counts()
    return {"elapsed": elapsed, "span": span(args.db), "requests": dict(worker.store.requests),
            "counts": counts, "peak_rss_mb": peak_rss_mb()}


def span(db: str) -> float:
    """Seconds from the first job's start (its claim) to the last job's end, by the index:
    the drain without the worker's own start and stop, as the peers are timed (their clock
    starts when the first job runs and stops when the last one does)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        first, last = conn.execute("SELECT min(started_at), max(finished_at) FROM jobs").fetchone()
    return envelope.parse_time(last) - envelope.parse_time(first)


def serve(args: argparse.Namespace) -> dict:
    worker = make_worker(args)
    worker.install_signals()
    list_times: list[float] = []
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    start = time.monotonic()

    def sample() -> None:  # every 50 ms: LIST counter and RSS
        seen = 0
        while not done.wait(0.05):
            lists = worker.store.requests["list"]
            now = time.monotonic() - start
            if lists > seen:
                list_times.extend([now] * (lists - seen))
                seen = lists
            samples.append((now, rss_mb()))

    def answer() -> None:  # the bench asks for the counters at the edges of its windows
        for line in sys.stdin:
            if line.strip() == "requests":
                print(json.dumps(dict(worker.store.requests)), flush=True)

    threading.Thread(target=sample, daemon=True).start()
    threading.Thread(target=answer, daemon=True).start()
    print("ready", flush=True)
    worker.run(burst=False)
    done.set()
    counts = Index(args.db).counts()
    return {"elapsed": time.monotonic() - start, "requests": dict(worker.store.requests),
            "list_times": list_times, "rss_samples": samples, "peak_rss_mb": peak_rss_mb(),
            "counts": counts}


def fill(args: argparse.Namespace) -> dict:
    """N rows as ingest would insert them, envelopes built by qlite.envelope."""
    index = Index(args.db)
    now = time.time()
    start = time.perf_counter()
    batch = []
    total = 0
    for i in range(args.n):
        env = envelope.make("bench.noop", [i], {}, queue=args.queue, now=now)
        batch.append({"id": env["id"], "task": env["task"], "queue": args.queue,
                      "priority": 0, "max_attempts": 3, "run_at": now,
                      "envelope": envelope.encode(env, 262144).decode(),
                      "inbox_key": envelope.inbox_key(args.queue, env["id"]), "key": None,
                      "enqueued_at": env["enqueued_at"], "expires_at": None})
        if len(batch) == 10_000:
            total += index.insert_jobs(batch, now)
            batch = []
    total += index.insert_jobs(batch, now)
    index.close()
    return {"inserted": total, "elapsed": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_child")
    parser.add_argument("mode", choices=["drain", "serve", "fill"])
    parser.add_argument("--url")
    parser.add_argument("--db", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--queue", default="default")
    args = parser.parse_args()
    result = {"drain": drain, "serve": serve, "fill": fill}[args.mode](args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
