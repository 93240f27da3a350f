"""The qlite cases, against the SeaweedFS the benchmark started (its env is in os.environ).

Every case writes under its own prefix of the bench bucket, so runs never see each other's
jobs. Workers run in child processes (bench.worker_child).
"""

from __future__ import annotations

import compileall
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import qlite
from qlite import doorbell, envelope
from qlite.store import _make_client

from .servers import BUCKET
from .stats import percentile, run_child

CHILD = "bench.worker_child"


def url(name: str) -> str:
    return f"s3://{BUCKET}/{name}"


def sample_body(i: int = 0) -> bytes:
    """The bytes of a typical no-op envelope, as Client.put writes them."""
    return envelope.encode(envelope.make("bench.noop", [i], {}))


def raw_client():
    return _make_client(os.environ["AWS_ENDPOINT_URL_S3"])


def raw_put(client, prefix: str, body: bytes) -> None:
    """One PutObject as qlite does it (conditional, JSON content type), with bare boto3."""
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/inbox/default/{uuid.uuid4()}.json",
                      Body=body, ContentType="application/json", IfNoneMatch="*")


# -- the S3 server's own ceiling ----------------------------------------------------------------

def ceiling(seconds: float, threads: int) -> float:
    """Small PutObject requests/s with ``threads`` threads sharing one boto3 client."""
    client, body = raw_client(), sample_body()
    prefix = f"ceiling-{uuid.uuid4().hex[:8]}"
    for _ in range(threads):
        raw_put(client, prefix, body)  # open the connections
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def loop(k: int) -> None:
        while time.perf_counter() < stop:
            raw_put(client, prefix, body)
            counts[k] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    return sum(counts) / (time.perf_counter() - start)


# -- 1. enqueue latency -------------------------------------------------------------------------

def enqueue_latency(n: int) -> dict:
    """Client.put, an encrypted Client.put (QLITE_ENCRYPTION_KEY) and raw put_object of the
    same bytes, interleaved, after a warm-up."""
    from qlite.crypto import keygen

    name = f"lat-{uuid.uuid4().hex[:8]}"
    client, raw = qlite.Client(url(name)), raw_client()
    sealed = qlite.Client(url(name + "-enc"), encryption_key=keygen())
    body = sample_body()
    for i in range(20):
        client.put("bench.noop", [i])
        sealed.put("bench.noop", [i])
        raw_put(raw, name + "-raw", body)
    q_ms, raw_ms, enc_ms = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        client.put("bench.noop", [i])
        t1 = time.perf_counter()
        raw_put(raw, name + "-raw", body)
        t2 = time.perf_counter()
        sealed.put("bench.noop", [i])
        t3 = time.perf_counter()
        q_ms.append((t1 - t0) * 1e3)
        raw_ms.append((t2 - t1) * 1e3)
        enc_ms.append((t3 - t2) * 1e3)
    return {"qlite_p50": percentile(q_ms, 50), "qlite_p99": percentile(q_ms, 99),
            "raw_p50": percentile(raw_ms, 50), "raw_p99": percentile(raw_ms, 99),
            "encrypted_p50": percentile(enc_ms, 50),
            "qlite_jobs_s": n / (sum(q_ms) / 1e3), "producer_requests":
            {k: v / (n + 20) for k, v in client.store.requests.items()}}


# -- 2. cold producer ---------------------------------------------------------------------------

COLD_QLITE = "import qlite; qlite.Client().put('bench.noop', [1])"
COLD_BOTO3 = """
import os, uuid
import boto3
from botocore.config import Config
c = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"],
    config=Config(connect_timeout=3, read_timeout=30,
                  retries={"mode": "standard", "max_attempts": 4}, max_pool_connections=32,
                  s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                  response_checksum_validation="when_required"))
c.put_object(Bucket="bench", Key="cold-raw/inbox/default/%s.json" % uuid.uuid4(),
             Body=os.environb[b"BENCH_BODY"], ContentType="application/json", IfNoneMatch="*")
"""


def cold_producer(n: int) -> dict:
    """Wall time of ``python -c`` putting one job: qlite vs bare boto3, interleaved."""
    env = {**os.environ, "QLITE_URL": url("cold"), "BENCH_BODY": sample_body().decode()}
    # pip compiles an installed package's modules, as it did boto3's. An editable checkout
    # has none (or stale ones after an edit) and PYTHONDONTWRITEBYTECODE, when set, keeps
    # Python from writing them: every run would compile qlite from source, about 20 ms.
    compileall.compile_dir(Path(qlite.__file__).parent, quiet=1)
    # A queue that a worker serves has its bell (each worker start writes it), so a producer's
    # read of it finds it. A queue no worker ever served answers 404, about 8 ms more for a
    # cold process (docs/performance.md).
    doorbell.ensure(qlite.Client(url("cold")).store)
    times: dict[str, list[float]] = {"qlite": [], "boto3": []}
    for _ in range(n):
        for name, code in (("qlite", COLD_QLITE), ("boto3", COLD_BOTO3)):
            times[name].append(run_timed([sys.executable, "-c", code], env) * 1e3)
    # The mean without the fastest and the slowest run: one slow start of the interpreter (a
    # busy disk, another process) moves a plain mean a lot, a trimmed one hardly.
    return {"qlite_ms": trimmed_mean(times["qlite"]), "boto3_ms": trimmed_mean(times["boto3"]),
            "qlite_p50_ms": percentile(times["qlite"], 50),
            "boto3_p50_ms": percentile(times["boto3"], 50)}


def run_timed(command: list[str], env: dict, timeout: float = 60) -> float:
    """Seconds from spawning ``command`` to its exit. ``subprocess.run(timeout=...)`` polls
    the child with sleeps of up to 50 ms, which put every figure on 50 ms steps; a blocking
    wait, with a timer to kill a hung child, measures the exit itself."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        code = proc.wait()
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise subprocess.CalledProcessError(code, command)
    return elapsed


def trimmed_mean(values: list[float]) -> float:
    kept = sorted(values)[1:-1] if len(values) > 2 else values
    return sum(kept) / len(kept)


# -- 3. bulk enqueue ----------------------------------------------------------------------------

def put_many(name: str, n: int, pack: bool = True) -> dict:
    client = qlite.Client(url(name))
    jobs = [("bench.noop", [i]) for i in range(n)]
    t0 = time.perf_counter()
    client.put_many(jobs, pack=pack)
    elapsed = time.perf_counter() - t0
    return {"jobs_s": n / elapsed, "elapsed": elapsed,
            "producer_requests": {k: v / n for k, v in client.store.requests.items()}}


# -- 4. drain -----------------------------------------------------------------------------------

def drain(n: int, concurrency: int, tmp: Path, pack: bool = True) -> dict:
    """put_many N no-op jobs (packed, or one object each) into a fresh prefix, then time one
    worker draining them."""
    name = f"drain-c{concurrency}-{uuid.uuid4().hex[:8]}"
    bulk = put_many(name, n, pack)
    out = run_child(CHILD, "drain", "--url", url(name), "--db", str(tmp / f"{name}.db"),
                    "--concurrency", str(concurrency), timeout=600)
    done = out["counts"].get("succeeded", 0)
    if done != n:
        raise RuntimeError(f"drain: {done} of {n} jobs succeeded: {out['counts']}")
    # Drains are timed as the peers are: first job started to last job ended, so the worker's
    # own start and stop are left out (wall_jobs_s keeps them). A single-put drain's jobs come
    # with inline keys: its LIST is its only read before the first job.
    jobs_s = (n - 1) / out["span"]
    return {"jobs_s": jobs_s, "wall_jobs_s": n / out["elapsed"], "elapsed": out["elapsed"],
            "worker_requests": {k: v / n for k, v in out["requests"].items()},
            "peak_rss_mb": out["peak_rss_mb"], "put_many_jobs_s": bulk["jobs_s"],
            "producer_requests": bulk["producer_requests"]}


class ServeWorker:
    """A ``serve`` worker child: started, told to stop with SIGTERM, its JSON collected."""

    def __init__(self, name: str, tmp: Path, concurrency: int = 4, env: dict | None = None,
                 db: Path | None = None):
        self.db = db or tmp / f"{name}.db"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", CHILD, "serve", "--url", url(name),
             "--db", str(self.db), "--concurrency", str(concurrency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"worker child did not start: {line}{self.proc.stderr.read()}")

    def running(self, timeout: float = 60) -> None:
        """Return once the worker's loop has LISTed its inbox (its start is over)."""
        deadline = time.monotonic() + timeout
        while not self.requests().get("list"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker child made no LIST within {timeout} s")
            time.sleep(0.05)

    def requests(self) -> dict:
        """The worker's S3 requests so far, by operation (asked over its stdin)."""
        self.proc.stdin.write("requests\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self, timeout: float = 60) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"worker child exited {self.proc.returncode}: {err[-3000:]}")
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


WARMUP = 2.0  # seconds of steady puts before the timed ones


def steady(rate: float, seconds: float, tmp: Path) -> dict:
    """Put ``rate`` jobs/s for ``seconds`` with Client.put while a worker runs; a watcher LISTs
    results/ every 50 ms and notes when each job's result becomes visible. Steady state: the
    puts start once the worker runs (its first LIST made), and the first WARMUP seconds of them
    (while the worker learns the arrival rate) are put but not timed."""
    name = f"steady-{uuid.uuid4().hex[:8]}"
    worker = ServeWorker(name, tmp)
    try:
        worker.running()  # steady state: no job waits for the worker's own start
        client = qlite.Client(url(name))
        put_at: dict[str, float] = {}
        seen_at: dict[str, float] = {}
        lock = threading.Lock()
        producing = threading.Event()
        producing.set()
        watcher = threading.Thread(target=_watch_results, daemon=True,
                                   args=(name, put_at, seen_at, lock, producing))
        watcher.start()
        n_target = int(rate * seconds)
        n_warm = int(rate * WARMUP)
        wall = time.time() - time.perf_counter()  # perf_counter -> Unix time (index times)
        start = time.perf_counter()
        for i in range(n_warm + n_target):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if i == n_warm:
                timed = time.perf_counter()
            t = time.perf_counter()
            job = client.put("bench.noop", [i])
            if i >= n_warm:
                with lock:
                    put_at[job.id] = t
        achieved = n_target / (time.perf_counter() - timed)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if len(seen_at) >= len(put_at):
                    break
            time.sleep(0.1)
        producing.clear()
        watcher.join(5)
        stats = worker.stop()
    finally:
        worker.kill()
    lat = [(seen_at[j] - put_at[j]) * 1e3 for j in put_at if j in seen_at]
    n = len(put_at)
    every = n + n_warm  # requests are shared by every job put, timed or not
    requests = {**{k: v / every for k, v in stats["requests"].items()}}
    for op, count in client.store.requests.items():  # its PUTs, and its doorbell reads
        requests[op] = requests.get(op, 0) + count / every
    return {"rate": achieved, "jobs": n, "visible": len(lat), "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99), "requests": requests,
            "split_ms": _split(worker.db, put_at, seen_at, wall)}


# The stages of put -> visible result, from the worker's index (times in ms, 1 ms resolution)
STAGES = ("taken_in", "started", "finished", "visible")


def _split(db: Path, put_at: dict, seen_at: dict, wall: float) -> dict:
    """Where put -> visible result went, per job, p50 and p99 of each stage: put call -> row
    in the index (the LIST's wait, the GET, the insert), -> claimed (started_at), -> handler
    done and recorded (finished_at), -> seen in results/ by the watcher (the record's PUT, the
    watcher's 50 ms LIST). Same host, so the worker's clock is the bench's."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, ingested_at, started_at, finished_at FROM jobs").fetchall()
    finally:
        con.close()
    spans: dict[str, list[float]] = {s: [] for s in STAGES}
    for job_id, *times in rows:
        if job_id not in put_at or job_id not in seen_at or None in times:
            continue
        marks = [put_at[job_id] + wall, *(envelope.parse_time(t) for t in times),
                 seen_at[job_id] + wall]
        for stage, a, b in zip(STAGES, marks, marks[1:], strict=False):
            spans[stage].append((b - a) * 1e3)
    return {f"{s}_p{p}": round(percentile(v, p), 1) for s, v in spans.items() for p in (50, 99)}


def _watch_results(name: str, put_at: dict, seen_at: dict, lock: threading.Lock,
                   producing: threading.Event) -> None:
    client = raw_client()
    prefix = f"{name}/results/"
    while producing.is_set():
        with lock:
            waiting = sorted(j for j in put_at if j not in seen_at)
        if waiting:
            token: dict = {"StartAfter": prefix + waiting[0]}
            while True:
                resp = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **token)
                now = time.perf_counter()
                with lock:
                    for item in resp.get("Contents", ()):
                        job_id = item["Key"][len(prefix):-len(".json")]
                        seen_at.setdefault(job_id, now)
                if not resp.get("IsTruncated"):
                    break
                token = {"ContinuationToken": resp["NextContinuationToken"]}
        time.sleep(0.05)


# -- 6. idle cost -------------------------------------------------------------------------------

def idle_start(tmp: Path) -> ServeWorker:
    """A worker on an empty queue, with the default poll settings (QLITE_POLL_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLITE_POLL")}
    return ServeWorker(f"idle-{uuid.uuid4().hex[:8]}", tmp, env=env)


def idle_finish(worker: ServeWorker, warmup: float = 20.0) -> dict:
    """LISTs per hour after ``warmup`` seconds (the back-off, then the doorbell's sleep with
    its LIST every 10 minutes): the LISTs counted over the time, not the spacing of the last
    ones, which would miss a worker that went quiet."""
    out = worker.stop()
    times = out["list_times"]
    steady_times = [t for t in times if t >= warmup]
    per_s = len(steady_times) / (out["elapsed"] - warmup) if out["elapsed"] > warmup \
        else float("nan")
    return {"lists": len(times), "seconds": out["elapsed"], "list_times": times,
            "steady_lists_per_hour": per_s * 3600,
            "naive_lists_per_hour": len(times) / out["elapsed"] * 3600}


# -- 7. memory ----------------------------------------------------------------------------------

def memory_pending(name: str, seconds: float, tmp: Path) -> dict:
    """Peak RSS of a worker started on the inbox ``name`` (already holding pending jobs),
    after ``seconds`` of work."""
    worker = ServeWorker(name, tmp)
    try:
        time.sleep(seconds)
        out = worker.stop()
    finally:
        worker.kill()
    return {"peak_rss_mb": out["peak_rss_mb"], "counts": out["counts"]}


def memory_index(n: int, seconds: float, tmp: Path) -> dict:
    """Peak RSS of a worker whose index already holds ``n`` queued rows (inserted with
    Index.insert_jobs by another process), after ``seconds`` of work."""
    name = f"mem-index-{uuid.uuid4().hex[:8]}"
    filled = run_child(CHILD, "fill", "--db", str(tmp / f"{name}.db"), "--n", str(n),
                       timeout=600)
    out = memory_pending(name, seconds, tmp)
    return {**out, "inserted": filled["inserted"], "fill_seconds": filled["elapsed"]}
