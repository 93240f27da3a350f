"""Idle as deployed: one worker with Litestream on, behind a request-counting proxy
(bench/countproxy.py), so the worker's and Litestream's requests are counted together. Once the
worker sleeps on the doorbell (its idlest state: what an hour of silence leads to, reached in
under a minute) and Litestream's one-off requests after its start are over (a minute without
any), the proxy counts every request for ``seconds``, priced at AWS list prices; then
jobs are put one at a time, each after the worker fell asleep again, and their pickup (put call
to handler start) is timed. ``python -m bench idle`` runs it alone (docs/costs.md)."""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import qlite
from qlite import doorbell

from .countproxy import CountingProxy, dollars_per_month
from .s3cases import ServeWorker, raw_client, url
from .servers import BUCKET
from .stats import percentile


def _bell(client, name: str) -> dict:
    try:
        raw = client.get_object(Bucket=BUCKET, Key=f"{name}/{doorbell.KEY}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return {}
    return json.loads(raw)


def _asleep(client, name: str, timeout: float) -> float:
    """Wait until the worker says it sleeps; seconds waited."""
    start = time.monotonic()
    while not _bell(client, name).get("asleep"):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"idle bench: the worker did not fall asleep in {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - start


def _by_op(counts: Counter, name: str, litestream: bool) -> dict[str, int]:
    ops: Counter[str] = Counter()
    for (op, area), n in counts.items():
        if area.startswith(f"{name}/index") == litestream and n:
            ops[op] += n
    return dict(ops)


def _quiet(proxy: CountingProxy, name: str, quiet: float, timeout: float) -> dict[str, int]:
    """Wait until Litestream has sent nothing for ``quiet`` seconds (at most ``timeout``);
    returns the requests it sent meanwhile."""
    first = last = proxy.snapshot()
    start = since = time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - start < timeout:
        time.sleep(1.0)
        now = proxy.snapshot()
        if _by_op(now - last, name, True):
            since = time.monotonic()
        last = now
    return _by_op(last - first, name, True)


def run(tmp: Path, say: Callable[[str], None], seconds: float = 180,
        pickups: int = 20) -> dict:
    """The whole case, against the SeaweedFS whose env is in os.environ."""
    direct = raw_client()
    proxy = CountingProxy(os.environ["AWS_ENDPOINT_URL_S3"])
    name = f"idle-deployed-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLITE_POLL")}
    env.update(AWS_ENDPOINT_URL_S3=proxy.endpoint, QLITE_REPLICATE="on")
    worker = ServeWorker(name, tmp, env=env)
    try:
        slept = _asleep(direct, name, 180)
        say(f"idle: the worker fell asleep {slept:.0f} s after it started; counting "
            f"{seconds:.0f} s of requests (worker and Litestream) through a proxy")
        time.sleep(doorbell.CACHE + 1)  # its closing LIST
        # Litestream sends a few requests once, a minute or two after it starts (L1/L2 of
        # the new replica), then nothing while the index is unchanged: a month of idle is
        # that quiet state, so the window opens once Litestream has been quiet for a minute.
        startup = _quiet(proxy, name, 60, 300)
        say(f"idle: Litestream quiet for 60 s (its start-up requests: {startup}); counting "
            f"{seconds:.0f} s")
        before, start = proxy.snapshot(), time.monotonic()
        # When in the window each request came, by minute: a timer's rate, or a one-off
        minutes: list[dict[str, dict[str, int]]] = []
        last = before
        while (left := start + seconds - time.monotonic()) > 0:
            time.sleep(min(60.0, left))
            now = proxy.snapshot()
            minutes.append({"worker": _by_op(now - last, name, False),
                            "litestream": _by_op(now - last, name, True)})
            last = now
        after, elapsed = last, time.monotonic() - start
        window = after - before
        still = _bell(direct, name).get("asleep") is True
        say(f"idle: pickup after idle, {pickups} jobs, each put while the worker sleeps")
        client = qlite.Client(url(name))  # straight to SeaweedFS: not counted
        rng = random.Random(1)
        latencies = []
        for _ in range(pickups):
            _asleep(direct, name, 120)
            time.sleep(rng.uniform(doorbell.CACHE + 0.5, doorbell.CACHE + 3))  # any phase
            t = time.time()
            started = client.put("bench.stamp").result(timeout=120)
            latencies.append(started - t)
        stats = worker.stop()
    finally:
        worker.kill()
        proxy.close()
    ops_worker, ops_litestream = _by_op(window, name, False), _by_op(window, name, True)
    total = Counter(ops_worker) + Counter(ops_litestream)
    return {
        "seconds": elapsed, "asleep_after_s": slept, "asleep_throughout": still,
        "litestream_startup_requests": startup,
        "requests_worker": ops_worker, "requests_litestream": ops_litestream,
        "per_minute": {op: n * 60 / elapsed for op, n in sorted(total.items())},
        "dollars_month": dollars_per_month(dict(total), elapsed),
        "dollars_month_worker": dollars_per_month(ops_worker, elapsed),
        "dollars_month_litestream": dollars_per_month(ops_litestream, elapsed),
        "requests_by_minute": minutes,
        "pickup_ms": [x * 1e3 for x in latencies],
        "pickup_p50_ms": percentile([x * 1e3 for x in latencies], 50),
        "pickup_p95_ms": percentile([x * 1e3 for x in latencies], 95),
        "pickup_max_ms": max(latencies) * 1e3,
        "worker_counts": stats["counts"],
    }


def table(r: dict) -> str:
    per_min = ", ".join(f"{op} {n:.1f}" for op, n in r["per_minute"].items())
    # The minutes in which Litestream sent anything (its timers, or a one-off after start)
    busy = [f"{i + 1}: " + ", ".join(f"{op} {n}" for op, n in m["litestream"].items())
            for i, m in enumerate(r.get("requests_by_minute", ())) if m["litestream"]]
    return "\n".join([
        "idle as deployed (worker + Litestream, counted by a proxy):",
        f"  {r['seconds']:.0f} s asleep: {per_min} per minute",
        f"  ${r['dollars_month']:.2f}/month at AWS list prices (worker "
        f"${r['dollars_month_worker']:.2f}, Litestream ${r['dollars_month_litestream']:.2f}); "
        "target <= $1.50",
        f"  Litestream's requests by minute of the window: {'; '.join(busy) or 'none'}",
        f"  pickup after idle: p50 {r['pickup_p50_ms']:.0f} ms, p95 {r['pickup_p95_ms']:.0f} ms, "
        f"max {r['pickup_max_ms']:.0f} ms over {len(r['pickup_ms'])} jobs; target p95 <= 1000 ms",
    ])
