"""Fleet chaos: four worker processes ("VMs": each its own index file) on one bucket, jobs put
in waves (half packed, half one object each) while workers are SIGKILLed at random moments and
restarted, and one is paused (SIGSTOP) until the others fence it, then woken (SIGCONT). An
execution ledger (one line per handler run: job id, attempt, pid) shows that nothing is lost,
every job reaches a terminal state, and re-runs stay within a bound per kill.

A tier of `make chaos` only (QLITE_CHAOS_FLEET_JOBS, QLITE_CHAOS_FLEET_KILLS, QLITE_CHAOS_SEED,
QLITE_CHAOS_SERVERS): it needs minutes, and tests/test_fleet.py already runs a kill and a
pause in `make test`.

All the VMs run on this host, so a killed worker is seen dead at once (its pid is gone:
docs/fleet.md); the pause is what makes the others wait out a lease and fence.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import time
import uuid

import pytest

import qlite
from conftest import TASKS_DIR, _clean_env, start_worker
from qlite.envelope import shard_of
from qlite.index.db import Index
from qlite.settings import Settings
from qlite.store import Store
from qlite.worker.fleet import describe

JOBS = int(os.environ.get("QLITE_CHAOS_FLEET_JOBS", "0"))
KILLS = int(os.environ.get("QLITE_CHAOS_FLEET_KILLS", "12"))
SEED = int(os.environ.get("QLITE_CHAOS_SEED", "20261125"))
SERVERS = os.environ.get("QLITE_CHAOS_SERVERS", "seaweedfs").split(",")

pytestmark = pytest.mark.skipif(JOBS <= 0, reason="the fleet chaos tier runs in make chaos "
                                "(set QLITE_CHAOS_FLEET_JOBS)")

VMS = ("a", "b", "c", "d")
CONCURRENCY = 4
JOB_SECONDS = 0.2  # I/O-bound work; long enough that a kill finds jobs running
LEASE = 8  # seconds (30 by default): the pause waits it out
SHARDS = 32
PACK_FLUSH = 1.0  # qlite.worker.publish.PACK_FLUSH: how long finished pack members may wait
# Re-runs one kill (or pause) may cause: the victim's running jobs (its slots) and those it
# finished but had not yet published: a pack's members wait up to PACK_FLUSH for their batched
# record, plus one publish round trip (counted as another second).
PER_KILL = CONCURRENCY + int(CONCURRENCY * (PACK_FLUSH + 1.0) / JOB_SECONDS)


def eventually(check, timeout: float, every: float = 0.2, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what or check} not within {timeout}s: {value!r}"
        time.sleep(every)


@pytest.fixture(params=SERVERS)
def bucket_env(request, tmp_path, monkeypatch):
    server = request.getfixturevalue({"seaweedfs": "seaweed", "moto": "moto"}[request.param])
    bucket = f"qlite-chaos-fleet-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    env = {**_clean_env(), **server.env(), "QLITE_URL": f"s3://{bucket}/f",
           "PYTHONPATH": str(TASKS_DIR), "QLITE_FLEET_LEASE": str(LEASE),
           "QLITE_SHARDS": str(SHARDS), "QLITE_POLL_MIN": "0.1", "QLITE_POLL_MAX": "0.5",
           "QLITE_CONCURRENCY": str(CONCURRENCY), "QLITE_GRACE": "20",
           # Four Litestream processes would crowd two cores; replication has its own chaos.
           "QLITE_REPLICATE": "off"}
    for k in [k for k in os.environ if k.startswith(("AWS_", "QLITE_")) and k != "AWS_CA_BUNDLE"]:
        monkeypatch.delenv(k)
    for k, v in env.items():  # the producer and describe() in this process read them too
        if k.startswith(("AWS_", "QLITE_")):
            monkeypatch.setenv(k, v)
    return request.param, server, bucket, env


@pytest.fixture
def chaos(bucket_env, tmp_path):
    name, server, bucket, env = bucket_env
    c = Chaos(server, bucket, env, tmp_path)
    c.name = name
    yield c
    for proc in c.procs.values():  # a failed test leaves no worker behind
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)


class Chaos:
    def __init__(self, server, bucket: str, env: dict, tmp_path):
        self.server, self.bucket, self.env, self.dir = server, bucket, env, tmp_path
        self.ledger = tmp_path / "ledger.txt"
        self.ledger.touch()
        self.procs: dict[str, object] = {}
        self.store = Store(Settings.load(env=env).require_url(), env["AWS_ENDPOINT_URL_S3"])

    def start(self, vm: str):
        (self.dir / vm).mkdir(exist_ok=True)
        self.procs[vm] = start_worker(
            "--app", "testapp:app", env={**self.env, "QLITE_DB": str(self.dir / vm / "i.db")},
            log=self.dir / f"{vm}.log")
        return self.procs[vm]

    def log(self, vm: str) -> str:
        return (self.dir / f"{vm}.log").read_text(errors="replace")

    def runs(self) -> list[tuple[str, int, int]]:
        lines = self.ledger.read_text().splitlines()
        return [(a, int(b), int(c)) for a, b, c in (ln.split() for ln in lines if ln)]

    def records(self, read_all: bool = False) -> dict[str, str | None]:
        """Job id -> state of every terminal record: results/{id}.json and pack records. A
        job's own record is read only with ``read_all`` (its key alone says it is there)."""
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                   Prefix="f/results/")
        out: dict[str, str | None] = {}
        for key in (o["Key"] for p in pages for o in p.get("Contents", [])):
            packed = key.startswith("f/results/packs/")
            body = json.loads(client.get_object(Bucket=self.bucket, Key=key)["Body"].read()) \
                if packed or read_all else {}
            if packed:
                out.update({i: r["state"] for i, r in body["jobs"].items()})
            else:
                out[key[len("f/results/"):-len(".json")]] = body.get("state")
        return out

    def inbox(self) -> int:
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                   Prefix="f/inbox/")
        return sum(len(p.get("Contents", [])) for p in pages)

    def report(self) -> str:
        """What is left, for a failure's message: the fleet, the inbox by shard and owner,
        and each VM's index by state."""
        state = describe(self.store)
        owners = {}
        found = self.store.get_etag("coord/shards.json")
        table = json.loads(found[0])["owners"] if found else {}
        for s, o in table.items():
            owners[int(s)] = (o.get("mid") or "-")[:6]
        left = collections.Counter()
        client = self.server.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                   Prefix="f/inbox/")
        for key in (o["Key"] for p in pages for o in p.get("Contents", [])):
            shard = shard_of(key.rsplit("/", 1)[1].split(".")[0], SHARDS)
            left[(shard, owners.get(shard))] += 1
        indexes = {}
        for vm in VMS:
            index = Index(self.dir / vm / "i.db", readonly=True)
            indexes[vm] = index.counts()
            index.close()
        members = [(m["mid"][:6], m["owner"], m["shards"], m["fenced_by"]) for m in
                   state["members"]]
        return (f"members {members}; unowned {state['unowned_ranges']}; inbox left by "
                f"(shard, owner) {dict(left)}; records {len(self.records())}; "
                f"indexes {indexes}")

    def live(self) -> list[dict]:
        return [m for m in describe(self.store)["members"]
                if not m["fenced_by"]]


def test_a_fleet_loses_nothing_through_kills_restarts_and_a_pause(chaos):
    name, env = chaos.name, chaos.env
    rng = random.Random(SEED)
    for vm in VMS:
        chaos.start(vm)
    eventually(lambda: len(chaos.live()) == len(VMS), 90, what="four members")

    plan = ["kill"] * KILLS + ["pause"]
    rng.shuffle(plan)
    job = {"task": "test.work", "kwargs": {"path": str(chaos.ledger), "seconds": JOB_SECONDS},
           "max_attempts": 20}  # attempts restart on a shard's new owner; never fail here
    client = qlite.Client(env["QLITE_URL"])
    ids: set[str] = set()
    victims: set[int] = set()  # pids killed or paused: the only ones whose jobs may run twice
    figures = {"server": name, "jobs": JOBS, "kills": 0, "pauses": 0, "seed": SEED}
    started = time.monotonic()

    for step, fault in enumerate(plan):
        wave = JOBS // len(plan) if step < len(plan) - 1 else JOBS - len(ids)
        jobs = (client.put_many([job] * (wave // 2))
                + client.put_many([job] * (wave - wave // 2), pack=False))
        ids |= {j.id for j in jobs}
        # Strike while this wave runs: after a random share of it has started somewhere.
        before = len(chaos.runs())
        target = before + rng.randint(1, max(wave // 2, 1))
        eventually(lambda t=target: len(chaos.runs()) >= t, 120, what=f"{target} runs")
        vm = rng.choice(VMS)
        proc = chaos.procs[vm]
        victims.add(proc.pid)
        if fault == "kill":
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            figures["kills"] += 1
            chaos.start(vm)  # the VM comes back: a new member on the same index
        else:
            proc.send_signal(signal.SIGSTOP)
            try:  # the others wait out its lease on their own clocks, then fence it (and
                # delete its member object once they hold all its shards)
                eventually(lambda pid=str(proc.pid): not any(
                    m["owner"].split(":")[1] == pid and not m["fenced_by"]
                    for m in describe(chaos.store)["members"]), 6 * LEASE,
                    what=f"the fence of {vm}")
            finally:
                proc.send_signal(signal.SIGCONT)
            eventually(lambda v=vm: "fenced by" in chaos.log(v), 60, what="the zombie's notice")
            figures["pauses"] += 1
    last_fault = time.monotonic()

    try:
        eventually(lambda: len(chaos.records()) >= JOBS and chaos.inbox() == 0, 300,
                   every=1.0, what="every job terminal, inbox empty")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{chaos.report()}") from None
    figures["drain_seconds"] = round(time.monotonic() - last_fault, 1)
    figures["seconds"] = round(time.monotonic() - started, 1)
    for proc in chaos.procs.values():
        proc.send_signal(signal.SIGTERM)
    for vm, proc in chaos.procs.items():
        assert proc.wait(90) == 0, chaos.log(vm)[-3000:]

    records = chaos.records(read_all=True)
    assert set(records) == ids and len(ids) == JOBS  # nothing lost, nothing extra
    assert set(records.values()) == {"succeeded"}
    assert chaos.inbox() == 0
    assert describe(chaos.store)["members"] == []  # each left the fleet on SIGTERM
    runs = chaos.runs()
    assert {r[0] for r in runs} == ids  # every effect happened
    counts = collections.Counter(r[0] for r in runs)
    again = {i for i, n in counts.items() if n > 1}
    # Only jobs a killed or paused worker had run may run again, and boundedly per fault.
    assert all(any(r[0] == i and r[2] in victims for r in runs) for i in again)
    duplicates = len(runs) - len(ids)
    faults = figures["kills"] + figures["pauses"]
    assert duplicates <= faults * PER_KILL, (duplicates, faults, PER_KILL)
    figures.update(lost=0, duplicates=duplicates, jobs_run_twice=len(again),
                   bound=faults * PER_KILL, per_kill_max=PER_KILL,
                   max_runs_of_a_job=max(counts.values()))
    print(f"\nfleet chaos figures: {json.dumps(figures)}")
