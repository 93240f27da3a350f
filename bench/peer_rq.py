"""RQ with Redis: SimpleWorker (no fork per job), burst mode, in this process."""

from __future__ import annotations

import os
import time

from redis import Redis
from rq import Queue, SimpleWorker

marks: dict[str, float] = {}


def noop(*args):
    return None


def mark(which):
    marks[which] = time.perf_counter()


def run(n: int) -> dict:
    conn = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    conn.flushdb()
    queue = Queue("bench", connection=conn)
    t0 = time.perf_counter()
    queue.enqueue(mark, "first")
    for i in range(n - 2):
        queue.enqueue(noop, i)
    queue.enqueue(mark, "last")
    enqueue = time.perf_counter() - t0
    SimpleWorker([queue], connection=conn).work(burst=True, logging_level="WARNING")
    return {"enqueue_s": enqueue, "drain_s": marks["last"] - marks["first"]}
