"""Huey 3 with SqliteHuey: thread consumer, one worker thread (or ``workers``), in this process."""

from __future__ import annotations

import logging
import os
import threading
import time

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "/tmp/bench-huey.db"))
marks: dict[str, float] = {}
finished = threading.Event()


@huey.task()
def noop(*args):
    return None


@huey.task()
def mark(which):
    marks[which] = time.perf_counter()
    if which == "last":
        finished.set()


def run(n: int, workers: int = 1) -> dict:
    logging.getLogger("huey").setLevel(logging.WARNING)
    huey.flush()
    t0 = time.perf_counter()
    mark("first")
    for i in range(n - 2):
        noop(i)
    mark("last")
    enqueue = time.perf_counter() - t0
    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False)
    consumer.start()
    try:
        if not finished.wait(600):
            raise RuntimeError("huey: the last job did not run within 600 s")
    finally:
        consumer.stop(graceful=True)
    return {"enqueue_s": enqueue, "drain_s": marks["last"] - marks["first"]}
