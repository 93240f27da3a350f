"""Chaos: 400 jobs (half packed) through worker processes killed with SIGKILL at random
moments and at every named crash point, an S3 server restart and a lost disk (the index
restored from its Litestream replica); nothing may be lost.

The fast tier runs in `make test` on SeaweedFS; `make chaos` runs a longer one on SeaweedFS and
moto server (QLITE_CHAOS_JOBS, QLITE_CHAOS_KILLS, QLITE_CHAOS_SEED, QLITE_CHAOS_SERVERS).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid

import pytest

import qlite
from conftest import TASKS_DIR, _clean_env, start_worker
from qlite.index.db import Index
from qlite.testing.devserver import SeaweedFS
from qlite.worker.faults import POINTS
from qlite.worker.turns import AHEAD_MAX

JOBS = int(os.environ.get("QLITE_CHAOS_JOBS", "400"))
RANDOM_KILLS = int(os.environ.get("QLITE_CHAOS_KILLS", "6"))
SEED = int(os.environ.get("QLITE_CHAOS_SEED", "20261125"))
# The fast tier (make test) runs on SeaweedFS, the server it also restarts; make chaos adds moto.
SERVERS = os.environ.get("QLITE_CHAOS_SERVERS", "seaweedfs").split(",")
# How long the drain after the last fault may take: a timeout for a loaded 2-core machine
# (make chaos drains some 4,000 jobs there; the figure printed is the measure).
DRAIN_TIMEOUT = 600
CONCURRENCY = 4  # QLITE_CONCURRENCY of the workers: the jobs one kill can leave half done


@pytest.fixture(params=SERVERS)
def chaos(request, tmp_path, monkeypatch):
    """A bucket on a server this test may restart (its own SeaweedFS), or on moto server,
    which keeps its data in memory only, so it is never restarted."""
    own = None
    if request.param == "seaweedfs":
        own = SeaweedFS(tmp_path / "seaweedfs")
        own.start()
        server = own
    else:
        server = request.getfixturevalue("moto")
    bucket = f"qlite-chaos-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    env = {**_clean_env(), **server.env(), "QLITE_URL": f"s3://{bucket}/c",
           "QLITE_DB": str(tmp_path / "disk" / "index.db"), "PYTHONPATH": str(TASKS_DIR),
           "QLITE_REPLICATE": "on",
           "QLITE_POLL_MIN": "0.1", "QLITE_POLL_MAX": "0.5", "QLITE_LEASE": "10",
           "QLITE_CONCURRENCY": str(CONCURRENCY)}
    for k, v in env.items():
        if k.startswith(("AWS_", "QLITE_")):
            monkeypatch.setenv(k, v)
    yield request.param, server, own, bucket, env
    if own:
        own.stop(grace=0)  # a restart in the test stops it gently; its data is not kept


def _duplicates_since(ledger, seen: tuple[int, set]) -> tuple[tuple[int, set], int]:
    """Runs of already-run jobs among the ledger lines written since ``seen``: which fault
    costs the re-runs (issue 19's bound)."""
    read, ids = seen
    if not ledger.exists():
        return seen, 0
    complete = _ledger_lines(ledger)
    again = 0
    for line in complete[read:]:
        job_id = line.split()[0]
        again += job_id in ids
        ids.add(job_id)
    return (len(complete), ids), again


def _ledger_lines(ledger) -> list[str]:
    """The ledger's complete lines (a killed handler may have left half of one)."""
    text = ledger.read_text() if ledger.exists() else ""
    lines = text.splitlines()
    return lines[:-1] if lines and not text.endswith("\n") else lines


def _rerun_kinds(lines: list[str]) -> dict[str, int]:
    """Re-runs by kind: a new attempt (the claim was committed, the outcome was not: what a
    kill costs) or the same attempt again (the index forgot the claim: a lost disk)."""
    seen: set[tuple[str, str]] = set()
    ran: set[str] = set()
    kinds = {"new_attempt": 0, "same_attempt": 0}
    for line in lines:
        job_id, attempt = line.split()[:2]
        if job_id in ran:
            kinds["same_attempt" if (job_id, attempt) in seen else "new_attempt"] += 1
        ran.add(job_id)
        seen.add((job_id, attempt))
    return kinds


def answered(read, timeout: float = 60.0):
    """``read()``, asked again while the server is not answering yet: a SeaweedFS just
    restarted by the test accepts connections a moment before it serves its buckets."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except (ClientError, BotoCoreError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def count(server, bucket: str, prefix: str) -> int:
    def read() -> int:
        client = server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(len(p.get("Contents", [])) for p in pages)

    return answered(read)


def test_nothing_is_lost_through_kills_crash_points_a_server_restart_and_a_lost_index(
        chaos, tmp_path):
    name, server, own, bucket, env = chaos
    rng = random.Random(SEED)
    ledger = tmp_path / "ledger.txt"
    logs = tmp_path / "logs"
    logs.mkdir()
    job = {"task": "test.ledger", "kwargs": {"path": str(ledger)}, "max_attempts": 20}
    # Half in packs (results batched per pack), half one object per job.
    jobs = (qlite.Client().put_many([job] * (JOBS // 2))
            + qlite.Client().put_many([job] * (JOBS - JOBS // 2), pack=False))
    ids = {j.id for j in jobs}

    plan = [("crash", p) for p in POINTS] + [("kill", None)] * RANDOM_KILLS
    rng.shuffle(plan)
    plan.insert(len(plan) // 2, ("lose_index", None))
    if own is not None:
        plan.insert(len(plan) // 3, ("restart_s3", None))
    figures = {"jobs": JOBS, "kills": 0, "crash_points": [], "s3_restarts": 0,
               "index_losses": 0, "duplicates_by_step": {}}
    seen: tuple[int, set] = (0, set())  # ledger lines read, job ids run

    def results() -> int:
        """Terminal records (a job recorded twice counts twice)."""
        return len(answered(read_records))

    def read_records() -> list[str]:
        """The ids of jobs with a terminal record: one object each, or in their pack's."""
        client = server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                   Prefix="c/results/")
        keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
        packed = [k for k in keys if k.startswith("c/results/packs/")]
        recorded = [k.removeprefix("c/results/").removesuffix(".json") for k in keys
                    if k not in packed]
        for k in packed:
            body = client.get_object(Bucket=bucket, Key=k)["Body"].read()
            recorded.extend(json.loads(body)["jobs"])
        return recorded

    # Jobs that had run but had no record in the bucket when the disk was lost: the only
    # ones a lost disk may run again with the same attempt (the replica may not hold them).
    at_risk: set[str] = set()

    for step, (fault, point) in enumerate(plan):
        if results() >= JOBS:
            break
        log = logs / f"{step:02d}-{fault}.log"
        if fault == "crash":
            worker = start_worker("--app", "testapp:app",
                                  env={**env, "QLITE_CRASH_AT": point}, log=log)
            try:
                code = worker.wait(60)
            except Exception:
                worker.kill()
                code = worker.wait()
            if code == -signal.SIGKILL:
                figures["kills"] += 1
                figures["crash_points"].append(point)
        elif fault == "kill":
            worker = start_worker("--app", "testapp:app", env=env, log=log)
            time.sleep(rng.uniform(0.5, 2.0))
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            figures["kills"] += 1
        elif fault == "restart_s3":
            worker = start_worker("--app", "testapp:app", env=env, log=log)
            deadline = time.monotonic() + 60
            while "worker started" not in log.read_text():  # up and working, then the outage
                assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
                time.sleep(0.1)
            time.sleep(0.5)
            own.stop()
            time.sleep(1.0)
            own.start()
            before = results()
            deadline = time.monotonic() + 60
            while results() == before and results() < JOBS:  # the same worker goes on
                assert time.monotonic() < deadline, "no progress after the S3 restart"
                time.sleep(0.5)
            assert worker.poll() is None, "the worker died during the S3 outage"
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            figures["kills"] += 1
            figures["s3_restarts"] += 1
        elif fault == "lose_index":
            # The worker's disk is gone (index, WAL, Litestream's local state): the next
            # worker restores the index from the replica in the bucket. A lost disk is a dead
            # machine, so the killed worker's Litestream (which holds the replica lock until it
            # has finished its shutdown sync) is gone first: wait for that lock, not a time.
            lockfile = tmp_path / "disk" / "index.db.replica.lock"
            if lockfile.exists():
                with open(lockfile, "a") as held:
                    fcntl.flock(held, fcntl.LOCK_EX)
            ran = {line.split()[0] for line in _ledger_lines(ledger)}
            at_risk |= ran - set(answered(read_records))
            shutil.rmtree(tmp_path / "disk")
            figures["index_losses"] += 1
        seen, by_step = _duplicates_since(ledger, seen)
        if by_step:
            figures["duplicates_by_step"][f"{step:02d}-{point or fault}"] = by_step
    last_fault = time.monotonic()

    figures["drain_workers"] = []
    for n in range(20):
        log = logs / f"drain-{n:02d}.log"
        started = time.monotonic()
        final = start_worker("--app", "testapp:app", "--burst", env=env, log=log)
        try:
            code = final.wait(DRAIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            final.kill()
            final.wait()
            pytest.fail(f"a --burst worker did not finish within {DRAIN_TIMEOUT}s: "
                        f"{figures}\n{log.read_text()[-6000:]}")
        figures["drain_workers"].append(round(time.monotonic() - started, 1))
        assert code == 0, log.read_text()[-3000:]
        if results() >= JOBS and count(server, bucket, "c/inbox/") == 0:
            break
    drained = time.monotonic() - last_fault

    # Every job terminal: exactly one succeeded record per job in results/ and in the index.
    assert results() == JOBS
    for job_id in rng.sample(sorted(ids), min(50, JOBS)):
        assert qlite.Client().status(job_id)["state"] == "succeeded"
    index = Index(tmp_path / "disk" / "index.db", readonly=True)
    assert index.counts() == {"succeeded": JOBS}
    assert {r.id for r in index.jobs(limit=JOBS * 2)} == ids
    assert count(server, bucket, "c/inbox/") == 0
    assert count(server, bucket, "c/quarantine/") == 0
    # Every effect present; duplicates (at-least-once) bounded and reported.
    lines = ledger.read_text().splitlines()
    runs = [line.split()[0] for line in lines]
    assert set(runs) == ids
    duplicates = len(runs) - len(set(runs))
    kinds = _rerun_kinds(lines)
    worker_logs = "".join(p.read_text(errors="replace") for p in sorted(logs.iterdir()))
    restores = {"restored": worker_logs.count("index restored from"),
                "no_replica": worker_logs.count("index has no replica in"),
                "unusable": worker_logs.count("is unusable")}
    figures.update(server=name, duplicates=duplicates, reruns=kinds, at_risk=len(at_risk),
                   restores=restores, lost=0, drain_seconds=round(drained, 1), seed=SEED)
    print(f"\nchaos figures: {json.dumps(figures)}")
    # No replica was bad: issue 19's cause (the worker's own checkpoints while no Litestream
    # ran) is gone, and a set-aside would hide it. The bucket is the evidence (a replica set
    # aside moves to index-bad/); the logs may miss a line, as a SIGKILL right after a restore
    # can take the worker's last log lines with it. How many restores ran is reported.
    assert count(server, bucket, "c/index-bad/") == 0, figures
    assert restores["unusable"] == 0, figures
    # The bound (docs/guarantees.md): a kill re-runs at most the jobs its worker had started
    # and not recorded (its slots, QLITE_CONCURRENCY, plus the quick jobs claimed ahead whose
    # outcomes wait for their batch, turns.AHEAD_MAX), each with a new attempt; a lost disk
    # re-runs, with the same attempt, at most the jobs that had run without a record in the
    # bucket (a pack's members wait up to PACK_FLUSH for their batched record).
    assert kinds["new_attempt"] <= figures["kills"] * (CONCURRENCY + AHEAD_MAX), figures
    assert kinds["same_attempt"] <= len(at_risk), figures
    assert drained < DRAIN_TIMEOUT  # a timeout, not a speed test: the figure is printed
