"""`make bench`: start SeaweedFS and redis-server, run every case BENCH_RUNS times, print one
table of medians, write bench/results.json and bench/results.png. Sizes: see SIZES below.

`python -m bench fleet` (`make bench-fleet`): the fleet case alone (bench/fleet.py), on a
SeaweedFS of its own; its figures replace the "fleet" entry of bench/results.json.
`python -m bench idle` (`make bench-idle`): idle as deployed and pickup after idle alone
(bench/idle.py); its figures replace the "idle_deployed" entry.

`python -m bench only CASE[,CASE...]`: only those cases of a round (names in CASES), BENCH_RUNS
rounds, each round's figures printed as JSON; results.json and the chart are left alone. For
example `python -m bench only drain_c1,drain_c4,huey,huey_c4` compares drains in one run."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import fleet, idle, report, s3cases
from .servers import Redis, start_seaweedfs
from .stats import knob, run_child

HERE = Path(__file__).resolve().parent
SIZES = {
    "runs": knob("BENCH_RUNS", 3),                  # rounds of every case; medians reported
    "latency_puts": knob("BENCH_LATENCY_N", 300),   # case 1: puts per variant per round
    "cold_runs": knob("BENCH_COLD_N", 21),          # case 2: subprocesses per variant per round
    "bulk_jobs": knob("BENCH_BULK_N", 10_000),      # case 3: put_many size
    "drain_jobs": knob("BENCH_DRAIN_N", 10_000),    # cases 4 and 5: jobs drained per worker
    "single_jobs": knob("BENCH_SINGLE_N", 1_000),   # case 4/6: drain of jobs put one by one
    "rate_max": knob("BENCH_RATE", 100),            # case 4: steady producer rate cap, jobs/s
    "rate_seconds": knob("BENCH_RATE_SECONDS", 20), # case 4: seconds of steady production
    "idle_seconds": knob("BENCH_IDLE_SECONDS", 60), # case 6: at least this long idle
    # idle as deployed: the window, a whole period of Litestream's 10-minute compaction check
    "idle_cost_seconds": knob("BENCH_IDLE_COST_SECONDS", 600),
    "pickups": knob("BENCH_PICKUPS", 20),           # pickup after idle: jobs timed
    "memory_jobs": knob("BENCH_MEMORY_N", 100_000), # case 7: rows put straight in the index
    "memory_seconds": knob("BENCH_MEMORY_SECONDS", 10),  # case 7: worker runtime before RSS
    "ceiling_seconds": knob("BENCH_CEILING_SECONDS", 4),
    "ceiling_threads": knob("BENCH_CEILING_THREADS", 8),
}
PEERS = ("huey", "rq", "celery")
# The cases of a round, in the order they run; `python -m bench only` picks some of them.
CASES = ("ceiling", "latency", "cold", "bulk", "drain_c1", "drain_c4", "drain_single",
         "huey", "huey_c4", "rq", "celery", "steady")
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def clean_environment(seaweed, redis: Redis | None, tmp: Path) -> None:
    """Point qlite and boto3 at our SeaweedFS only; the peers at our redis-server."""
    for k in [k for k in os.environ if k.startswith(("AWS_", "QLITE_"))]:
        if k != "AWS_CA_BUNDLE":
            del os.environ[k]
    os.environ.update(seaweed.env())
    if redis is not None:
        os.environ["BENCH_REDIS_URL"] = redis.url
    os.environ["BENCH_HUEY_DB"] = str(tmp / "huey.db")
    os.environ["QLITE_LOG_LEVEL"] = "WARNING"


def one_round(r: int, tmp: Path, rate: float | None,
              cases: tuple[str, ...] = CASES) -> dict:
    n = SIZES["drain_jobs"]
    out: dict = {}
    if "ceiling" in cases:
        say(f"round {r}: S3 ceiling ({SIZES['ceiling_threads']} threads)")
        out["ceiling"] = s3cases.ceiling(SIZES["ceiling_seconds"], SIZES["ceiling_threads"])
    if "latency" in cases:
        say(f"round {r}: enqueue latency ({SIZES['latency_puts']} puts each)")
        out["latency"] = s3cases.enqueue_latency(SIZES["latency_puts"])
    if "cold" in cases:
        say(f"round {r}: cold producer ({SIZES['cold_runs']} runs each)")
        out["cold"] = s3cases.cold_producer(SIZES["cold_runs"])
    if "bulk" in cases:
        say(f"round {r}: put_many of {SIZES['bulk_jobs']:,} jobs")
        out["bulk"] = s3cases.put_many(f"bulk-{r}", SIZES["bulk_jobs"])
    for c in (1, 4):
        if f"drain_c{c}" in cases:
            say(f"round {r}: drain of {n:,} packed jobs, concurrency {c}")
            out[f"drain_c{c}"] = s3cases.drain(n, c, tmp)
    single = SIZES["single_jobs"]
    if "drain_single" in cases:
        say(f"round {r}: drain of {single:,} jobs put one object each, concurrency 4")
        out["drain_single"] = s3cases.drain(single, 4, tmp, pack=False)
    for peer in PEERS:
        if peer in cases:
            say(f"round {r}: {peer}: enqueue and drain of {n:,} jobs")
            out[peer] = run_child("bench.peers", peer, str(n), timeout=900)
    if "huey_c4" in cases:
        say(f"round {r}: huey, 4 worker threads: enqueue and drain of {n:,} jobs")
        out["huey_c4"] = run_child("bench.peers", "huey", str(n), "4", timeout=900)
    if "steady" in cases:
        if rate is None:  # a rate the worker can sustain: at most half its measured drain
            single_rate = out["drain_single"]["jobs_s"] if "drain_single" in out else 200
            rate = max(1.0, min(SIZES["rate_max"], round(single_rate / 2)))
        say(f"round {r}: steady {rate:g} jobs/s for {SIZES['rate_seconds']} s")
        out["steady"] = s3cases.steady(rate, SIZES["rate_seconds"], tmp)
        out["steady"]["rate_asked"] = rate
    return out


def machine() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    tmp = Path(tempfile.mkdtemp(prefix="qlite-bench-"))
    with contextlib.ExitStack() as stack:
        say(f"starting SeaweedFS and redis-server (data in {tmp})")
        seaweed = start_seaweedfs(tmp / "seaweedfs")
        stack.callback(seaweed.stop)
        redis = Redis(tmp / "redis")
        stack.callback(redis.stop)
        redis.start()
        clean_environment(seaweed, redis, tmp)

        idler = s3cases.idle_start(tmp)  # idles through the whole run, in its own queue
        stack.callback(idler.kill)
        idle_started = time.monotonic()

        rounds, rate = [], None
        for r in range(1, SIZES["runs"] + 1):
            rounds.append(one_round(r, tmp, rate))
            rate = rounds[0]["steady"]["rate_asked"]

        say(f"memory: worker on the last put_many inbox ({SIZES['bulk_jobs']:,} pending)")
        mem_inbox = s3cases.memory_pending(f"bulk-{SIZES['runs']}", SIZES["memory_seconds"],
                                           tmp)
        say(f"memory: worker on {SIZES['memory_jobs']:,} rows inserted into its index")
        mem_index = s3cases.memory_index(SIZES["memory_jobs"], SIZES["memory_seconds"], tmp)

        left = SIZES["idle_seconds"] - (time.monotonic() - idle_started)
        if left > 0:
            say(f"idle: waiting {left:.0f} s more")
            time.sleep(left)
        idle_result = s3cases.idle_finish(idler)

        deployed = idle.run(tmp, say, SIZES["idle_cost_seconds"], SIZES["pickups"])
        # Written and printed before the fleet case: a failure there keeps these figures.
        results = report.build(SIZES, machine(), rounds, mem_inbox, mem_index, idle_result,
                               deployed)
        (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(report.table(results))
        print(idle.table(deployed), flush=True)
        fleet_result = fleet.run(tmp, say)

    results["fleet"] = {"machine": machine(), **fleet_result}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(fleet.table(fleet_result))
    report.chart(results, HERE / "results.png")
    say(f"wrote {HERE / 'results.json'} and {HERE / 'results.png'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def alone(name: str, run: Callable[[Path], dict], table: Callable[[dict], str]) -> int:
    """One case on a SeaweedFS of its own (no peers, no redis-server); its figures replace the
    ``name`` entry of bench/results.json."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix=f"qlite-bench-{name}-"))
    with contextlib.ExitStack() as stack:
        say(f"starting SeaweedFS (data in {tmp})")
        seaweed = start_seaweedfs(tmp / "seaweedfs")
        stack.callback(seaweed.stop)
        clean_environment(seaweed, None, tmp)
        result = run(tmp)
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = {"machine": machine(), **result}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(result))
    say(f"wrote the {name} entry of {path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def fleet_main() -> int:
    """The fleet case alone."""
    return alone("fleet", lambda tmp: fleet.run(tmp, say), fleet.table)


def idle_main() -> int:
    """Idle as deployed and pickup after idle alone."""
    return alone("idle_deployed", lambda tmp: idle.run(tmp, say, SIZES["idle_cost_seconds"],
                                                        SIZES["pickups"]), idle.table)


def only_main(cases: tuple[str, ...]) -> int:
    """Some cases of a round, BENCH_RUNS rounds, on servers of their own; prints each round's
    figures (and the ratios that have both sides) as JSON lines, writes no results file."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="qlite-bench-only-"))
    with contextlib.ExitStack() as stack:
        say(f"starting SeaweedFS and redis-server (data in {tmp})")
        seaweed = start_seaweedfs(tmp / "seaweedfs")
        stack.callback(seaweed.stop)
        redis = Redis(tmp / "redis")
        stack.callback(redis.stop)
        redis.start()
        clean_environment(seaweed, redis, tmp)
        rate = None
        for r in range(1, SIZES["runs"] + 1):
            out = one_round(r, tmp, rate, cases)
            rate = out.get("steady", {}).get("rate_asked")
            print(json.dumps({"round": r, **report.partial(out)}), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


USAGE = f"usage: python -m bench [fleet | idle | only CASE[,CASE...]] (cases: {', '.join(CASES)})"

if __name__ == "__main__":
    if sys.argv[1:] == ["fleet"]:
        sys.exit(fleet_main())
    if sys.argv[1:] == ["idle"]:
        sys.exit(idle_main())
    if len(sys.argv) == 3 and sys.argv[1] == "only":
        picked = tuple(c.strip() for c in sys.argv[2].split(",") if c.strip())
        unknown = [c for c in picked if c not in CASES]
        if unknown or not picked:
            sys.exit(f"python -m bench only: unknown case(s) {', '.join(unknown)!r}. {USAGE}")
        sys.exit(only_main(picked))
    if sys.argv[1:]:
        sys.exit(f"{USAGE} (got {' '.join(sys.argv[1:])!r})")
    sys.exit(main())
