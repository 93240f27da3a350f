"""The fleet case (issue 13): several worker processes on one bucket, each with its own index
(a "VM" each), sharing the inbox through the shards leased in coord/ (docs/fleet.md).

- Throughput of I/O-bound jobs (``bench.sleep``, 50 ms each) drained by 1, 2 and 4 workers,
  and the speedups over 1 worker (targets: >= 1.8x at 2, >= 3.2x at 4).
- S3 requests per job at 4 workers (default lease and polls, concurrency 4), no-op jobs as in
  case 6 of `make bench`: 10,000 in packs of 1,000 and 1,000 put one object each; the
  producer's requests plus every request the workers made between the put and their exit
  (coordination included).
- Idle cost of a fleet of 2 workers with the default settings (lease, polls): LISTs and PUTs
  per minute per worker once the fleet is balanced.

``python -m bench fleet`` runs this case alone (``make bench-fleet``); ``make bench`` runs it
after the other cases. Workers' S3 requests come from their own counters (``Store.requests``),
read over the child's stdin at the edges of each window (bench.worker_child serve).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import qlite
from qlite.index.db import Index
from qlite.settings import Settings
from qlite.store import Store
from qlite.worker.fleet import describe

from . import s3cases
from .report import PRICE, dollars_per_million
from .stats import knob

SIZES = {
    "jobs": knob("BENCH_FLEET_JOBS", 4800),          # packed jobs drained per fleet size
    "pack": knob("BENCH_FLEET_PACK", 10),            # jobs per pack (put_many call)
    "cost_packed": knob("BENCH_FLEET_COST_PACKED", 10_000),  # no-op jobs, packs of 1,000
    # no-op jobs, one object each: enough that the run's fixed cost (the fleet waking from the
    # doorbell, stopping, taking over) does not pass for a cost per job (docs/performance.md)
    "cost_single": knob("BENCH_FLEET_COST_SINGLE", 4_000),
    "sleep_ms": knob("BENCH_FLEET_SLEEP_MS", 50),    # what each job does: sleep this long
    "concurrency": knob("BENCH_FLEET_C", 2),         # handler slots per worker
    "lease": knob("BENCH_FLEET_LEASE", 15),          # QLITE_FLEET_LEASE of the busy fleets
    "idle_seconds": knob("BENCH_FLEET_IDLE_SECONDS", 120),  # idle window, at least
}
SIZES_WORKERS = (1, 2, 4)


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet bench: {what} not within {timeout:.0f}s (last: {value!r})")
        time.sleep(every)


def store_of(name: str) -> Store:
    return Store(Settings.load(url=s3cases.url(name)).require_url(),
                 os.environ["AWS_ENDPOINT_URL_S3"])


def balanced(store: Store, n: int) -> dict | None:
    """The fleet once it has ``n`` live members, no shard free and shares within 2 of each
    other (the handoff stops there: docs/fleet.md)."""
    s = describe(store)
    live = [m for m in s["members"] if not m["fenced_by"]]
    shares = [m["shards"] for m in live]
    if len(live) == n and s["unowned"] == 0 and min(shares) > 0 \
            and max(shares) - min(shares) <= 2:
        return s
    return None


def diff(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if after.get(k, 0) - before.get(k, 0)}


def add(*counters: dict) -> dict:
    out: dict = {}
    for c in counters:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def succeeded(dbs: list[Path], rebuilt: bool = False) -> list[int]:
    """Per worker, the jobs that succeeded by running there; with ``rebuilt``, those it
    restored from their records instead (a worker taking over a shard whose inbox objects
    were still there: finished elsewhere, not run again)."""
    counts = []
    for db in dbs:
        index = Index(db, readonly=True)
        try:
            counts.append(index.conn.execute(
                "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND (json_extract("
                "envelope, '$.meta.rebuilt_from') IS NULL) = ?", (not rebuilt,)).fetchone()[0])
        finally:
            index.close()
    return counts


class Fleet:
    """``n`` serve workers (bench.worker_child) on one queue, each with its own index."""

    def __init__(self, name: str, n: int, tmp: Path, concurrency: int, env: dict):
        self.name = name
        self.dbs = [tmp / name / f"vm{i}" / "index.db" for i in range(n)]
        self.workers: list[s3cases.ServeWorker] = []
        try:
            for db in self.dbs:
                db.parent.mkdir(parents=True)
                self.workers.append(s3cases.ServeWorker(name, tmp, concurrency, env, db=db))
        except BaseException:
            self.kill()
            raise

    def requests(self) -> list[dict]:
        return [w.requests() for w in self.workers]

    def stop(self) -> list[dict]:
        return [w.stop() for w in self.workers]

    def kill(self) -> None:
        for w in self.workers:
            w.kill()


def busy_env(lease: float) -> dict:
    """The throughput runs: a shorter lease (balanced sooner) and polls capped at 0.5 s (the
    first LIST after the put comes at once)."""
    return {**os.environ, "QLITE_FLEET_LEASE": str(lease), "QLITE_POLL_MAX": "0.5",
            "QLITE_REPLICATE": "off"}


def default_env() -> dict:
    """The cost runs: the default lease and polls, as a fleet runs in production."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QLITE_POLL", "QLITE_FLEET_LEASE", "QLITE_SHARDS"))}
    return {**env, "QLITE_REPLICATE": "off"}


def drain(n: int, tmp: Path, say: Callable[[str], None], *, job: tuple, jobs: int,
          pack: int | None, concurrency: int, env: dict, label: str) -> dict:
    """Start a fleet of ``n``, wait until it is balanced, put the jobs (in packs of ``pack``,
    one put_many call each, or one object each when None), time until every job has
    succeeded in some worker's index, then stop the fleet (SIGTERM: results published, shards
    released) and count the requests from the put to the exit."""
    kind = f"packs of {pack}" if pack else "single puts"
    name = f"fleet-{label}-{uuid.uuid4().hex[:8]}"
    store = store_of(name)
    started = time.monotonic()
    fleet = Fleet(name, n, tmp, concurrency, env)
    try:
        wait_for(lambda: balanced(store, n), 240, f"a balanced fleet of {n}")
        say(f"fleet of {n} balanced after {time.monotonic() - started:.0f} s; putting "
            f"{jobs:,} jobs ({kind})")
        before = fleet.requests()
        client = qlite.Client(s3cases.url(name))
        t0 = time.perf_counter()
        if pack:
            for _ in range(jobs // pack):
                client.put_many([job] * pack)
        else:
            client.put_many([job] * jobs, pack=False)
        put_s = time.perf_counter() - t0
        wait_for(lambda: sum(succeeded(fleet.dbs)) >= jobs, 900, f"{jobs} jobs done",
                 every=0.05)
        elapsed = time.perf_counter() - t0
        finals = fleet.stop()
    finally:
        fleet.kill()
    per_worker = succeeded(fleet.dbs)
    restored = succeeded(fleet.dbs, rebuilt=True)
    if sum(per_worker) != jobs:
        raise RuntimeError(f"fleet bench: {sum(per_worker)} of {jobs} jobs ran and succeeded "
                           f"({per_worker}; restored from records: {restored})")
    worker_requests = add(*(diff(f["requests"], b)
                            for f, b in zip(finals, before, strict=True)))
    ops = add(worker_requests, dict(client.store.requests))
    return {"workers": n, "kind": kind, "task": job[0], "jobs": jobs,
            "concurrency": concurrency, "elapsed": elapsed, "jobs_s": jobs / elapsed,
            "put_seconds": put_s, "jobs_per_worker": per_worker,
            "restored_per_worker": restored,
            "requests_per_job": {k: v / jobs for k, v in sorted(ops.items())},
            "worker_requests": worker_requests,
            "producer_requests": dict(client.store.requests)}


class IdleFleet:
    """Two workers with the default lease and poll settings on an empty queue; its window
    opens once the fleet is balanced and polls have backed off to QLITE_POLL_MAX."""

    def __init__(self, tmp: Path):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QLITE_POLL", "QLITE_FLEET_LEASE", "QLITE_SHARDS"))}
        env["QLITE_REPLICATE"] = "off"
        self.name = f"fleet-idle-{uuid.uuid4().hex[:8]}"
        self.store = store_of(self.name)
        self.fleet = Fleet(self.name, 2, tmp, 4, env)
        self.opened: float | None = None
        self.before: list[dict] = []
        self.error: BaseException | None = None
        # The window opens on a thread of its own while the busy cases run.
        self.thread = threading.Thread(target=self._open_window, daemon=True)
        self.thread.start()

    def _open_window(self, warmup: float = 30.0) -> None:
        """Once balanced, and ``warmup`` seconds after that (the poll back-off reaches
        QLITE_POLL_MAX 26 s after the last LIST that found something), note every worker's
        counters."""
        try:
            wait_for(lambda: balanced(self.store, 2), 240, "a balanced idle fleet of 2")
            time.sleep(warmup)
            self.before = self.fleet.requests()
            self.opened = time.monotonic()
        except BaseException as e:  # reported by close_window
            self.error = e

    def close_window(self, seconds: float) -> dict:
        self.thread.join()
        if self.error is not None or self.opened is None:
            raise RuntimeError(f"fleet bench: idle window never opened: {self.error!r}")
        left = seconds - (time.monotonic() - self.opened)
        if left > 0:
            time.sleep(left)
        after = self.fleet.requests()
        minutes = (time.monotonic() - self.opened) / 60
        self.fleet.stop()
        per_worker = [diff(a, b) for a, b in zip(after, self.before, strict=True)]
        total = add(*per_worker)
        per_minute = {k: v / minutes / 2 for k, v in sorted(total.items())}
        month = 60 * 24 * 30
        return {"workers": 2, "minutes": minutes, "requests": per_worker,
                "per_worker_per_minute": per_minute,
                "dollars_per_worker_month": sum(PRICE.get(op, 0.005e-3) * n * month
                                                for op, n in per_minute.items())}


def run(tmp: Path, say: Callable[[str], None]) -> dict:
    """The whole case, against the SeaweedFS whose env is in os.environ."""
    say("fleet: S3 ceiling (4 s, 8 threads)")
    ceiling = s3cases.ceiling(4, 8)
    say("fleet: idle fleet of 2 started (default lease and polls)")
    idle = IdleFleet(tmp)
    sleep = ("bench.sleep", [SIZES["sleep_ms"] / 1000])
    noop = ("bench.noop", [0])
    try:
        drains = []
        for n in SIZES_WORKERS:
            say(f"fleet: {n} worker(s), {SIZES['jobs']:,} jobs of {SIZES['sleep_ms']} ms in "
                f"packs of {SIZES['pack']}, concurrency {SIZES['concurrency']} each")
            drains.append(drain(n, tmp, say, job=sleep, jobs=SIZES["jobs"], pack=SIZES["pack"],
                                concurrency=SIZES["concurrency"],
                                env=busy_env(SIZES["lease"]), label=f"{n}w"))
        costs = {}
        for kind, jobs, pack in (("packed", SIZES["cost_packed"], 1000),
                                 ("single", SIZES["cost_single"], None)):
            say(f"fleet: cost at 4 workers (defaults, c=4): {jobs:,} no-op jobs, {kind}")
            costs[kind] = drain(4, tmp, say, job=noop, jobs=jobs, pack=pack, concurrency=4,
                                env=default_env(), label=f"cost-{kind}")
        say(f"fleet: idle window: at least {SIZES['idle_seconds']} s from its opening")
        idle_result = idle.close_window(SIZES["idle_seconds"])
    finally:
        idle.fleet.kill()
    base = drains[0]["jobs_s"]
    for d in drains:
        d["speedup"] = d["jobs_s"] / base
        d["ideal_jobs_s"] = d["workers"] * SIZES["concurrency"] * 1000 / SIZES["sleep_ms"]
    per_job = {k: sum(c["requests_per_job"].values()) for k, c in costs.items()}
    return {"sizes": SIZES, "ceiling_rps": ceiling, "drains": drains, "costs": costs,
            "idle": idle_result,
            "targets": [
                {"target": ">= 1.8x at 2 workers", "figure": f"{drains[1]['speedup']:.2f}x",
                 "met": drains[1]["speedup"] >= 1.8},
                {"target": ">= 3.2x at 4 workers", "figure": f"{drains[2]['speedup']:.2f}x",
                 "met": drains[2]["speedup"] >= 3.2},
                {"target": "<= 3.1 S3 requests per single-put job at 4 workers",
                 "figure": f"{per_job['single']:.4f}", "met": per_job["single"] <= 3.1},
                {"target": "<= 0.05 S3 requests per packed job at 4 workers",
                 "figure": f"{per_job['packed']:.4f}", "met": per_job["packed"] <= 0.05}],
            "dollars_per_million": {k: dollars_per_million(c["requests_per_job"])
                                    for k, c in costs.items()}}


def _ops(ops: dict, digits: int = 4) -> str:
    return " ".join(f"{k.upper()} {v:.{digits}f}" for k, v in sorted(ops.items()))


def table(r: dict) -> str:
    s = r["sizes"]
    lines = [f"qlite fleet bench: {s['sleep_ms']} ms sleeps, concurrency {s['concurrency']} "
             f"per worker, {s['jobs']:,} jobs in packs of {s['pack']}, lease {s['lease']} s; "
             f"S3 ceiling {r['ceiling_rps']:.0f} small PUT/s"]
    for d in r["drains"]:
        lines.append(f"  {d['workers']} worker(s): {d['jobs_s']:7.1f} jobs/s  "
                     f"speedup {d['speedup']:.2f}x  (ideal {d['ideal_jobs_s']:.0f}; "
                     f"{d['elapsed']:.1f} s; jobs per worker {d['jobs_per_worker']}; "
                     f"{sum(d['requests_per_job'].values()):.3f} S3 requests/job)")
    for kind, c in r["costs"].items():
        lines.append(f"  S3 requests/job at 4 workers, {c['jobs']:,} no-op jobs, {c['kind']}: "
                     f"{sum(c['requests_per_job'].values()):.4f}  "
                     f"({_ops(c['requests_per_job'])})  "
                     f"${r['dollars_per_million'][kind]:.2f}/M jobs; {c['jobs_s']:.1f} jobs/s; "
                     f"per worker {c['jobs_per_worker']}")
    idle = r["idle"]
    lines.append(f"  idle fleet of 2, per worker per minute: "
                 f"{_ops(idle['per_worker_per_minute'], 2)} over {idle['minutes']:.1f} min: "
                 f"${idle['dollars_per_worker_month']:.2f}/worker/month")
    for t in r["targets"]:
        lines.append(f"  target {t['target']}: {t['figure']}: "
                     f"{'MET' if t['met'] else 'MISSED'}")
    return "\n".join(lines)
