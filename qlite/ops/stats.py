"""What the worker's index says about the queue: counts, throughput, latency, cost.

Read-only: ``qlite stats``, ``qlite top`` and the dashboard open the index with
``Index(path, readonly=True)`` and call :func:`stats` or :func:`series`. Every figure comes from
the index, so it covers what this worker VM has taken in; jobs still in ``inbox/`` are not
counted until the worker ingests them.

Latency, per job or attempt (times are the worker's clock, except ``enqueued_at``, which is the
producer's):

- **wait**: from when the job could first run (``enqueued_at``, or its ``not_before``) to the
  start of its first attempt;
- **run**: from an attempt's start to its end (every attempt that ended, retries included);
- **pickup**: from ``enqueued_at`` to ingest (the inbox poll delay).

S3 cost: the worker adds its S3 requests by operation and the jobs it published to a
``counters`` table; requests per job is their quotient since the counters began (idle polling
included), priced at AWS S3 Standard list prices.
"""

from __future__ import annotations

import math
import time
from typing import Any

from qlite.envelope import now_rfc3339
from qlite.index.db import Index
from qlite.states import INDEXED, TERMINAL

STATES = INDEXED  # the order of every table and chart

# AWS S3 Standard list prices in US dollars per 1,000 requests (us-east-1). COPY, POST and
# LIST are priced as PUT; DELETE is free. "upload" is a managed (multipart) upload: at least
# one PUT-class request.
PRICE_PER_1000 = {"put": 0.005, "copy": 0.005, "list": 0.005, "upload": 0.005,
                  "get": 0.0004, "head": 0.0004, "delete": 0.0}


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0-100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _latency(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95)}


def cost(counters: dict[str, dict]) -> dict:
    """S3 requests per job and estimated dollars per million jobs from the worker's counters."""
    requests = {name[3:]: c["value"] for name, c in counters.items() if name.startswith("s3.")}
    jobs = counters.get("jobs.published", {}).get("value", 0)
    since = min((c["since"] for c in counters.values()), default=None)
    per_job = {op: n / jobs for op, n in requests.items()} if jobs else {}
    dollars = (sum(n * PRICE_PER_1000.get(op, PRICE_PER_1000["put"]) for op, n in per_job.items())
               * 1_000_000 / 1000) if jobs else None
    return {"since": since, "jobs": jobs, "requests": dict(sorted(requests.items())),
            "requests_per_job": sum(per_job.values()) if jobs else None,
            "per_job_by_operation": {op: round(v, 4) for op, v in sorted(per_job.items())},
            "dollars_per_million_jobs": round(dollars, 4) if dollars is not None else None,
            # Every job also cost its producer one PUT into inbox/, which no worker sees.
            "dollars_per_million_jobs_with_enqueue":
                round(dollars + 1000 * PRICE_PER_1000["put"], 4) if dollars is not None else None}


def stats(index: Index, since: float = 3600.0, now: float | None = None) -> dict:
    """Everything ``qlite stats`` shows, as a JSON-ready dict; the window is the last
    ``since`` seconds before ``now``."""
    now = time.time() if now is None else now
    start = now_rfc3339(now - since)
    queues: dict[str, dict[str, int]] = {}
    states = dict.fromkeys(STATES, 0)
    for r in index.read("stats_by_queue"):
        queues.setdefault(r["queue"], dict.fromkeys(STATES, 0))[r["state"]] = r["n"]
        states[r["state"]] = states.get(r["state"], 0) + r["n"]

    tasks: dict[str, dict[str, Any]] = {}

    def task(name: str) -> dict[str, Any]:
        return tasks.setdefault(name, {"finished": dict.fromkeys(TERMINAL, 0),
                                       "run": [], "wait": [], "pickup": []})

    finished = dict.fromkeys(TERMINAL, 0)
    for r in index.read("stats_finished", since=start):
        finished[r["state"]] += 1
        task(r["task"])["finished"][r["state"]] += 1
    for r in index.read("stats_run_times", since=start):
        if r["seconds"] is not None:
            task(r["task"])["run"].append(r["seconds"])
    for r in index.read("stats_wait_times", since=start):
        t = task(r["task"])
        if r["seconds"] is not None:
            t["wait"].append(r["seconds"])
        if r["pickup"] is not None:
            t["pickup"].append(r["pickup"])

    waiting = {r["queue"]: r for r in index.read("stats_waiting", now=now)}
    oldest = min((r["oldest"] for r in waiting.values()), default=None)
    everything = {k: [v for t in tasks.values() for v in t[k]] for k in ("run", "wait", "pickup")}
    return {
        "at": now_rfc3339(now),
        "since": start,
        "window_seconds": since,
        "states": states,
        "queues": {q: {**counts, "oldest_waiting_seconds": _age(waiting.get(q), now)}
                   for q, counts in sorted(queues.items())},
        "finished": finished,
        "throughput_per_minute": _per_minute(sum(finished.values()), since),
        "failure_rate": _failure_rate(finished),
        "wait": _latency(everything["wait"]),
        "run": _latency(everything["run"]),
        "pickup": _latency(everything["pickup"]),
        "oldest_waiting_seconds": max(0.0, now - oldest) if oldest is not None else None,
        "tasks": {
            name: {"finished": t["finished"],
                   "throughput_per_minute": _per_minute(sum(t["finished"].values()), since),
                   "failure_rate": _failure_rate(t["finished"]),
                   "wait": _latency(t["wait"]), "run": _latency(t["run"])}
            for name, t in sorted(tasks.items())
        },
        "s3": cost(index.counters()),
    }


def series(index: Index, since: float = 3600.0, buckets: int = 30,
           now: float | None = None) -> dict:
    """Per task, the window cut into ``buckets`` equal slices: jobs finished (and failed) per
    minute, and p50/p95 run and wait seconds, for the dashboard's charts."""
    now = time.time() if now is None else now
    start = now - since
    width = since / buckets
    out: dict[str, list[dict]] = {}

    def slot(name: str, at: str) -> dict | None:
        from qlite.envelope import parse_time

        i = int((parse_time(at) - start) // width)
        if not 0 <= i < buckets:
            return None
        rows = out.setdefault(name, [{"t": now_rfc3339(start + k * width), "finished": 0,
                                      "failed": 0, "run": [], "wait": []}
                                     for k in range(buckets)])
        return rows[i]

    for r in index.read("stats_finished", since=now_rfc3339(start)):
        if (b := slot(r["task"], r["finished_at"])) is not None:
            b["finished"] += 1
            b["failed"] += r["state"] == "failed"
    for r in index.read("stats_run_times", since=now_rfc3339(start)):
        if r["seconds"] is not None and (b := slot(r["task"], r["finished_at"])) is not None:
            b["run"].append(r["seconds"])
    for r in index.read("stats_wait_times", since=now_rfc3339(start)):
        if r["seconds"] is not None and (b := slot(r["task"], r["started_at"])) is not None:
            b["wait"].append(r["seconds"])
    for rows in out.values():
        for b in rows:
            run, wait = b.pop("run"), b.pop("wait")
            b.update(per_minute=round(b["finished"] / (width / 60), 4),
                     run_p50=percentile(run, 50), run_p95=percentile(run, 95),
                     wait_p50=percentile(wait, 50), wait_p95=percentile(wait, 95))
    return {"since": now_rfc3339(start), "at": now_rfc3339(now), "bucket_seconds": width,
            "tasks": dict(sorted(out.items()))}


def _per_minute(n: int, seconds: float) -> float:
    return round(n / (seconds / 60), 4)


def _failure_rate(finished: dict[str, int]) -> float | None:
    done = finished["succeeded"] + finished["failed"]
    return round(finished["failed"] / done, 4) if done else None


def _age(row: dict | None, now: float) -> float | None:
    return max(0.0, now - row["oldest"]) if row else None


def format_seconds(value: float | None) -> str:
    """A duration for people: 850ms, 12.3s, 4m05s, 2h10m."""
    if value is None:
        return "-"
    if round(value * 1000) < 1000:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def lines(s: dict) -> list[str]:
    """``qlite stats`` as text."""
    fmt = format_seconds
    window = fmt(s["window_seconds"])
    out = ["jobs by state: " + "  ".join(f"{k}={v}" for k, v in s["states"].items())]
    for q, c in s["queues"].items():
        out.append(f"  queue {q:<12} " + "  ".join(f"{k}={c[k]}" for k in STATES)
                   + f"  oldest waiting={fmt(c['oldest_waiting_seconds'])}")
    f = s["finished"]
    rate = s["failure_rate"]
    out += [
        f"last {window}: {sum(f.values())} finished ({f['succeeded']} succeeded, "
        f"{f['failed']} failed, {f['cancelled']} cancelled), "
        f"{s['throughput_per_minute']:g}/min, failure rate "
        f"{'-' if rate is None else f'{rate:.1%}'}",
        f"wait   p50 {fmt(s['wait']['p50'])}  p95 {fmt(s['wait']['p95'])}   "
        f"run p50 {fmt(s['run']['p50'])}  p95 {fmt(s['run']['p95'])}   "
        f"pickup p50 {fmt(s['pickup']['p50'])}  p95 {fmt(s['pickup']['p95'])}",
        f"oldest waiting job: {fmt(s['oldest_waiting_seconds'])}",
    ]
    for name, t in s["tasks"].items():
        tr = t["failure_rate"]
        out.append(f"  task {name:<24} {sum(t['finished'].values()):>6} finished  "
                   f"{t['throughput_per_minute']:g}/min  failed {t['finished']['failed']}"
                   f"{'' if tr is None else f' ({tr:.1%})'}  wait p50/p95 "
                   f"{fmt(t['wait']['p50'])}/{fmt(t['wait']['p95'])}  run p50/p95 "
                   f"{fmt(t['run']['p50'])}/{fmt(t['run']['p95'])}")
    c = s["s3"]
    if c["jobs"]:
        ops = ", ".join(f"{op} {n:g}" for op, n in c["per_job_by_operation"].items())
        out.append(f"S3: {c['requests_per_job']:.2f} requests per job ({ops}) over "
                   f"{c['jobs']} jobs since {c['since']}; "
                   f"${c['dollars_per_million_jobs']:.2f} per million jobs at AWS list prices "
                   f"(${c['dollars_per_million_jobs_with_enqueue']:.2f} with the producers' "
                   "PUTs)")
    else:
        out.append("S3: no jobs published yet (requests per job appear once the worker has "
                   "finished some)")
    return out
