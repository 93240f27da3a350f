"""Celery 5 with Redis: one worker process, solo pool, results off.

The worker is a ``celery worker`` child process started after the jobs are enqueued; the first
and last jobs write their wall-clock time to Redis, which gives the drain time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from celery import Celery
from redis import Redis

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(name="bench.noop")
def noop(*args):
    return None


@app.task(name="bench.mark")
def mark(which):
    Redis.from_url(os.environ["BENCH_REDIS_URL"]).set(f"bench:{which}", repr(time.time()))


def run(n: int) -> dict:
    conn = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    conn.flushdb()
    t0 = time.perf_counter()
    mark.delay("first")
    for i in range(n - 2):
        noop.delay(i)
    mark.delay("last")
    enqueue = time.perf_counter() - t0
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.peer_celery", "worker", "-P", "solo",
         "-c", "1", "-l", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while conn.get("bench:last") is None:
            if worker.poll() is not None:
                raise RuntimeError(f"celery worker exited {worker.returncode}: "
                                   f"{worker.stderr.read()[-2000:]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("celery: the last job did not run within 600 s")
            time.sleep(0.05)
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    first, last = float(conn.get("bench:first")), float(conn.get("bench:last"))
    return {"enqueue_s": enqueue, "drain_s": last - first}
