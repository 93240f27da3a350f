"""A fleet: several worker processes ("VMs": each its own index file and identity) on one
bucket, coordinated through coord/ in the bucket. The ledger of executions (one line per
handler run: job id, attempt, pid) proves each claim; kills are real SIGKILLs."""

import collections
import json
import os
import signal
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy

import qlite
from conftest import eventually, start_worker
from conftest import qlite as run_qlite
from qlite.settings import Settings
from qlite.store import Store
from qlite.worker.fleet import describe

# Seconds; renewed every third of it. Short for the tests (30 by default): the kill and pause
# tests wait for it to run out. The tests that count on no false takeover on a busy machine
# use a longer one (QUIET_LEASE): nothing there waits for it.
LEASE = 6
QUIET_LEASE = 15
SHARDS = 16


class Fleet:
    def __init__(self, target, tmp_path: Path, lease: float = LEASE):
        self.target = target
        self.lease = lease
        self.dir = tmp_path
        self.ledger = tmp_path / "ledger.txt"
        self.ledger.touch()
        self.procs: dict[str, object] = {}
        self.store = Store(Settings.load(env=target.env).require_url(),
                           target.env.get("AWS_ENDPOINT_URL_S3"))

    def env(self, vm: str, **extra: str) -> dict:
        return {**self.target.env, "QLITE_DB": str(self.dir / vm / "index.db"),
                "QLITE_FLEET_LEASE": str(self.lease), "QLITE_SHARDS": str(SHARDS),
                "QLITE_POLL_MAX": "0.5", "QLITE_CONCURRENCY": "4", "QLITE_GRACE": "20",
                **extra}

    def start(self, vm: str, **extra: str):
        (self.dir / vm).mkdir(exist_ok=True)
        proc = start_worker("--app", "testapp:app", env=self.env(vm, **extra),
                            log=self.dir / f"{vm}.log")
        self.procs[vm] = proc
        return proc

    def log(self, vm: str) -> str:
        return (self.dir / f"{vm}.log").read_text()

    def state(self) -> dict:
        return describe(self.store)

    def balanced(self, n: int) -> dict | None:
        """The fleet once it has ``n`` live members, each owning shards, none more than its
        fair share ceil(shards / n), and no shard free: the handovers are done."""
        s = self.state()
        live = [m for m in s["members"] if not m["fenced_by"]]
        share = -(-SHARDS // n)
        if len(live) == n and all(0 < m["shards"] <= share for m in live) \
                and s["unowned"] == 0 and sum(m["shards"] for m in live) == SHARDS:
            return s
        return None

    def runs(self) -> list[tuple[str, int, int]]:
        lines = self.ledger.read_text().split("\n")
        return [(a, int(b), int(c)) for a, b, c in (ln.split() for ln in lines if ln)]

    def put(self, n_single: int, n_packed: int = 0, seconds: float = 0.02) -> list:
        client = qlite.Client()
        kwargs = {"path": str(self.ledger), "seconds": seconds}
        jobs = [client.put("test.work", kwargs=kwargs) for _ in range(n_single)]
        if n_packed:
            jobs += client.put_many([{"task": "test.work", "kwargs": kwargs}
                                     for _ in range(n_packed)])
        return jobs

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for vm, proc in self.procs.items():
            try:
                proc.wait(60)
            except Exception as e:
                proc.kill()
                raise AssertionError(f"{vm} did not stop on SIGTERM:\n{self.log(vm)[-3000:]}") \
                    from e


@pytest.fixture
def fleet(seaweed_target, tmp_path):
    f = Fleet(seaweed_target, tmp_path)
    yield f
    for proc in f.procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def all_done(jobs, store: Store) -> bool:
    """Every job has a terminal record (results/ or its pack's record)."""
    return all(j.status()["state"] in ("succeeded", "failed", "cancelled") for j in jobs)


def test_three_workers_share_the_inbox_and_run_each_job_once(fleet):
    fleet.lease = QUIET_LEASE
    for vm in ("a", "b", "c"):
        fleet.start(vm)
    state = eventually(lambda: fleet.balanced(3), timeout=90)
    shares = sorted(m["shards"] for m in state["members"])
    assert shares[-1] - shares[0] <= 2, shares  # ceil(16/3) = 6 at most each

    jobs = fleet.put(150, 300)
    eventually(lambda: len({r[0] for r in fleet.runs()}) >= 450, timeout=120)
    eventually(lambda: all_done(jobs, fleet.store), timeout=60, every=0.5)
    fleet.stop_all()

    runs = fleet.runs()
    twice = [i for i, n in collections.Counter(r[0] for r in runs).items() if n > 1]
    assert twice == [] and len(runs) == 450
    per_pid = collections.Counter(r[2] for r in runs)
    assert len(per_pid) == 3, per_pid  # every worker took a share
    assert {j.status()["state"] for j in jobs} == {"succeeded"}
    assert fleet.state()["members"] == []  # each left the fleet on SIGTERM


def test_a_killed_worker_s_shards_are_taken_over_and_only_its_jobs_in_flight_run_again(fleet):
    for vm in ("a", "b", "c"):
        fleet.start(vm)
    eventually(lambda: fleet.balanced(3), timeout=90)
    jobs = fleet.put(240, seconds=0.1)
    victim = fleet.procs["b"]
    eventually(lambda: sum(1 for r in fleet.runs() if r[2] == victim.pid) >= 5, timeout=60)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    eventually(lambda: fleet.balanced(2), timeout=4 * LEASE + 30)
    took = time.monotonic() - killed_at
    assert took < 2 * LEASE + 10, took  # within two lease periods (plus a tick)
    eventually(lambda: all_done(jobs, fleet.store), timeout=120, every=0.5)
    fleet.stop_all()

    runs = fleet.runs()
    counts = collections.Counter(r[0] for r in runs)
    again = {i for i, n in counts.items() if n > 1}
    # Only what the victim had started and not yet published: its slots, plus the jobs that
    # finished in the instant before its results batch (at most one batch of 4).
    assert all(any(r[0] == i and r[2] == victim.pid for r in runs) for i in again)
    assert len(again) <= 8, again
    assert {j.status()["state"] for j in jobs} == {"succeeded"}
    assert "fenced; taking its shards" in fleet.log("a") + fleet.log("c")


def test_a_worker_killed_before_it_owned_a_shard_is_removed_from_the_fleet(fleet):
    fleet.start("a")
    eventually(lambda: fleet.balanced(1), timeout=60)
    late = fleet.start("b")  # a holds every shard: b gets some only after a handoff
    eventually(lambda: "joined the fleet" in fleet.log("b"), timeout=60)
    late.send_signal(signal.SIGKILL)
    late.wait(10)
    assert "took" not in fleet.log("b")
    # Nobody takes shards from it, yet its member object goes: qlite fleet lists the living.
    state = eventually(lambda: (s := fleet.state()) and len(s["members"]) == 1 and s,
                       timeout=4 * LEASE + 30)
    assert state["members"][0]["shards"] == SHARDS
    assert "owned no shard" in fleet.log("a")
    fleet.stop_all()


def test_a_paused_worker_is_fenced_and_its_late_results_are_not_written(fleet):
    fleet.start("a")
    paused = fleet.start("b")
    eventually(lambda: fleet.balanced(2), timeout=90)
    # One slow job per shard, so the paused worker has some in flight.
    jobs = fleet.put(40, seconds=1.5)
    eventually(lambda: sum(1 for r in fleet.runs() if r[2] == paused.pid) >= 2, timeout=60)
    paused.send_signal(signal.SIGSTOP)
    started = {r[0] for r in fleet.runs() if r[2] == paused.pid}
    try:
        eventually(lambda: fleet.balanced(1), timeout=4 * LEASE + 30)
        # Its shards are taken, a lease after the pause: whatever it had sent before the pause
        # has landed. A job it finished and published before the pause keeps its result (that
        # was no zombie write); the rest were in flight.
        by_id = {job.id: job for job in jobs}
        in_flight = {i for i in started
                     if by_id[i].status().get("result") != paused.pid}
    finally:
        paused.send_signal(signal.SIGCONT)
    eventually(lambda: "fenced by" in fleet.log("b"), timeout=30)
    eventually(lambda: all_done(jobs, fleet.store), timeout=120, every=0.5)
    fleet.stop_all()

    # The jobs the paused worker had started ran again elsewhere; the results written are
    # those of the other worker, never the zombie's late ones.
    for job in jobs:
        status = job.status()
        assert status["state"] == "succeeded"
        if job.id in in_flight:
            assert status["result"] != paused.pid, job.id
    assert "dropping" in fleet.log("b")


def test_a_rolling_deploy_and_a_join_move_work_without_running_anything_twice(fleet):
    fleet.lease = QUIET_LEASE
    old = fleet.start("old")
    eventually(lambda: fleet.balanced(1), timeout=60)
    jobs = fleet.put(60, 120, seconds=0.05)
    eventually(lambda: len(fleet.runs()) >= 20, timeout=60)
    fleet.start("new")  # start-new-then-stop-old
    eventually(lambda: "joined the fleet" in fleet.log("new"), timeout=60)
    old.send_signal(signal.SIGTERM)
    assert old.wait(60) == 0, fleet.log("old")[-3000:]
    eventually(lambda: fleet.balanced(1), timeout=60)
    fleet.start("joiner")  # a join: it gets a share within about a minute
    eventually(lambda: fleet.balanced(2), timeout=90)
    more = fleet.put(60, seconds=0.05)
    eventually(lambda: all_done(jobs + more, fleet.store), timeout=120, every=0.5)
    fleet.stop_all()

    runs = fleet.runs()
    assert len(runs) == len({r[0] for r in runs}) == 240
    by_pid = collections.Counter(r[2] for r in runs)
    assert by_pid[fleet.procs["joiner"].pid] > 0, by_pid


def test_qlite_fleet_lists_the_members_and_their_shards(fleet):
    fleet.start("a")
    fleet.start("b")
    eventually(lambda: fleet.balanced(2), timeout=90)
    out = run_qlite("fleet", "--json", env=fleet.target.env)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["shards"] == SHARDS and len(state["members"]) == 2
    assert sum(m["shards"] for m in state["members"]) == SHARDS
    text = run_qlite("fleet", env=fleet.target.env).stdout
    assert "2 member(s), 16 shards" in text
    # qlite stats and the dashboard show the same, next to the index's figures.
    stats = run_qlite("stats", "--json", env=fleet.env("a"))
    assert stats.returncode == 0, stats.stderr
    assert len(json.loads(stats.stdout)["fleet"]["members"]) == 2
    assert "fleet: 2 member(s)" in run_qlite("stats", env=fleet.env("a")).stdout
    from qlite.ops.dashboard import Dashboard

    settings = Settings.load(env=fleet.env("a"))
    board = Dashboard(settings.db_path(), url=settings.url, endpoint_url=settings.endpoint_url)
    assert sorted(m["mid"] for m in board.fleet()["members"]) == sorted(
        m["mid"] for m in state["members"])
    fleet.stop_all()
    assert "no worker has joined" in run_qlite("fleet", env=fleet.target.env).stdout


def test_periodic_ticks_fire_once_across_the_fleet_while_a_worker_is_killed(
        seaweed_target, tmp_path):
    ledger = tmp_path / "ticks.txt"
    ledger.touch()
    procs = []
    for vm in ("a", "b", "c"):
        (tmp_path / vm).mkdir()
        env = {**seaweed_target.env, "QLITE_DB": str(tmp_path / vm / "i.db"),
               "QLITE_FLEET_LEASE": str(LEASE), "QLITE_SHARDS": str(SHARDS),
               "QLITE_TEST_LEDGER": str(ledger), "QLITE_POLL_MAX": "0.5"}
        procs.append(start_worker("--app", "periodicapp:app", env=env,
                                  log=tmp_path / f"{vm}.log"))
    try:
        eventually(lambda: len(ledger.read_text().splitlines()) >= 4, timeout=90)
        # Kill whichever worker fired the latest tick: the schedule moves to another one.
        last_pid = int(ledger.read_text().splitlines()[-1].split()[1])
        victim = next(p for p in procs if p.pid == last_pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        seen = len(ledger.read_text().splitlines())
        eventually(lambda: {int(ln.split()[1]) for ln in
                            ledger.read_text().splitlines()[seen:]} - {last_pid},
                   timeout=4 * LEASE + 30)
        eventually(lambda: len(ledger.read_text().splitlines()) >= seen + 3, timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    ticks = collections.Counter(ln.split()[0] for ln in ledger.read_text().splitlines())
    twice = [t for t, n in ticks.items() if n > 1]
    # A tick whose job was running at the kill may run again (at least once); none other.
    assert len(twice) <= 1, twice
    assert os.path.getsize(ledger) > 0


def test_a_second_worker_refuses_to_start_on_a_server_that_cannot_coordinate(moto, tmp_path):
    # A proxy that drops If-None-Match and If-Match: every create "wins", so two workers
    # would both own every shard. The first worker is alone (it runs); a second refuses.
    moto.create_bucket("qlite-tests")
    prefix = f"t{time.time_ns()}/q/"
    with FaultProxy(moto.endpoint, strip=("If-None-Match", "If-Match")) as proxy:
        env = {**moto.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint,
               "QLITE_URL": f"s3://qlite-tests/{prefix}", "QLITE_REPLICATE": "off",
               "QLITE_DB": str(tmp_path / "a.db"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")
               + os.pathsep + str(Path(__file__).parent / "apps")}
        alone = run_qlite("worker", "--app", "testapp:app", "--burst", env=env)
        assert alone.returncode == 0, alone.stderr
        # Another worker is a member now (as a running one would be).
        moto.client().put_object(Bucket="qlite-tests", Key=f"{prefix}coord/members/x.json",
                                 Body=b'{"mid": "x"}')
        second = run_qlite("worker", "--app", "testapp:app", "--burst",
                           env={**env, "QLITE_DB": str(tmp_path / "b.db")})
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: fleet: another worker runs on this bucket"), lines
    assert "cannot coordinate workers" in lines[-1] and "Traceback" not in second.stderr


def test_keys_delays_cancels_retries_groups_and_chains_work_across_the_fleet(fleet):
    fleet.lease = QUIET_LEASE
    fleet.start("a")
    fleet.start("b")
    eventually(lambda: fleet.balanced(2), timeout=90)
    client = qlite.Client()
    keyed = [client.put("math.add", [i, 1], key=f"order-{i}") for i in range(10)]
    again = [client.put("math.add", [i, 1], key=f"order-{i}") for i in range(10)]
    assert [j.id for j in again] == [j.id for j in keyed]  # one job per key
    delayed = client.put("math.add", [2, 2], delay=2)
    chain = client.put("math.add", [3, 3], on_success="test.total")
    group = client.group([("math.add", [i, i]) for i in range(20)], then="test.total")
    flaky = client.put("test.flaky", kwargs={"fail_times": 2})
    far = client.put("math.add", [9, 9], delay=3600)
    cancel_state = client.cancel(far.id)["state"]
    fails = client.put("test.always_fail")
    eventually(lambda: fails.status()["state"] == "failed", timeout=90)
    client.retry(fails.id)

    eventually(lambda: all(j.status()["state"] == "succeeded"
                           for j in [*keyed, delayed, chain, flaky]), timeout=90, every=0.5)
    assert [j.result() for j in keyed] == [i + 1 for i in range(10)]
    assert flaky.status()["attempts"] == 3  # two failures, retried where it ran
    assert group.then.wait(timeout=90)["result"] == sum(2 * i for i in range(20))
    follow = client.job(client.key_id(f"on_success:{chain.id}"))
    assert follow.wait(timeout=60)["result"] == 6
    assert cancel_state in ("pending", "queued")
    eventually(lambda: far.status()["state"] == "cancelled", timeout=60)
    retried = eventually(lambda: fails.status()["attempts"] == 4 and fails.status(),
                         timeout=90)
    assert retried["state"] == "failed"  # ran again (2 more attempts), on whichever worker
    fleet.stop_all()


def test_a_job_waiting_for_a_retry_keeps_its_attempts_when_its_shard_is_handed_over(fleet):
    # The short lease: the shards move well within the jobs' 15-30 s back-off.
    fleet.start("a")
    eventually(lambda: fleet.balanced(1), timeout=60)
    client = qlite.Client()
    jobs = [client.put("test.fails_once", kwargs={"path": str(fleet.ledger)})
            for _ in range(24)]
    eventually(lambda: len(fleet.runs()) >= 24, timeout=60)  # every first attempt failed
    fleet.start("b")  # half the shards move while their jobs wait for the retry
    eventually(lambda: fleet.balanced(2), timeout=90)
    eventually(lambda: all_done(jobs, fleet.store), timeout=120, every=0.5)
    fleet.stop_all()

    runs = fleet.runs()
    assert sorted(collections.Counter(r[0] for r in runs).values()) == [2] * 24, runs
    assert {j.status()["attempts"] for j in jobs} == {2}
    b = fleet.procs["b"].pid
    moved = {r[0] for r in runs if r[2] == b}
    assert moved, "no job moved to the second worker"
    assert all(r[1] == 2 for r in runs if r[2] == b)  # it ran attempt 2, not a new attempt 1
    assert "waiting for a retry in shard" in fleet.log("b")


def test_the_shards_of_a_member_fenced_by_a_worker_that_died_since_are_taken(seaweed_target):
    """The fencer may die before it takes every shard of the member it fenced: the others
    take the rest. In process, with Fleet objects and no renewal thread (no waiting)."""
    from qlite.worker.fleet import MEMBERS, Fleet

    store = Store(seaweed_target.settings().require_url(),
                  seaweed_target.env["AWS_ENDPOINT_URL_S3"])
    old = Fleet(store, node="n1", owner="elsewhere:1:1", shards=4, lease=30)
    old._config()
    old._join()
    old.tick()
    assert old.owned == frozenset(range(4))
    # A worker since dead fenced it (the object's ETag the fencer saw) and took nothing.
    body, etag = store.get_etag(f"{MEMBERS}{old.mid}.json")
    fenced = {**json.loads(body), "fenced_by": "a-fencer-now-dead"}
    assert store.put_cas(f"{MEMBERS}{old.mid}.json", json.dumps(fenced).encode(), etag)

    new = Fleet(store, node="n2", owner="elsewhere:2:2", shards=4, lease=30)
    new._config()
    new._join()
    new.tick()
    assert new.owned == frozenset(range(4))
    assert [m["mid"] for m in describe(store)["members"]] == [new.mid]  # the dead one is gone


def unpublished_shards(db: Path) -> dict[str, int]:
    """Job id -> fleet shard of the rows the index at ``db`` holds and has not published."""
    from qlite.envelope import shard_of
    from qlite.index.db import Index

    index = Index(db, readonly=True)
    try:
        rows = index.conn.execute("SELECT id FROM jobs WHERE published = 0").fetchall()
    finally:
        index.close()
    return {r[0]: shard_of(r[0], SHARDS) for r in rows}


def waiting_retries(db: Path) -> int:
    from qlite.index.db import Index

    index = Index(db, readonly=True)
    try:
        return index.conn.execute("SELECT count(*) FROM jobs WHERE state = 'scheduled' "
                                  "AND attempts = 1").fetchone()[0]
    finally:
        index.close()


def replica_synced(db: Path) -> bool:
    """The Litestream of the worker on ``db`` confirms its replica holds the last commit."""
    import subprocess

    from qlite.worker.replica import find_litestream

    out = subprocess.run([find_litestream(), "sync", "-wait", "-json", "-timeout", "10",
                          "-socket", str(db.with_name(db.name + ".ls.sock")), str(db)],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return False
    answer = json.loads(out.stdout)
    return (answer.get("replica_txid") or 0) >= (answer.get("txid") or 0)


def test_a_killed_worker_s_waiting_retries_keep_their_attempts_through_its_replica(fleet):
    # Durability per shard: the jobs failed once on a and wait for their retry, a fact only
    # a's index holds. a is killed (no handoff); b takes its shards, reads a's Litestream
    # replica (only reads it) and runs each retry as attempt 2, not as a new attempt 1.
    a = fleet.start("a", QLITE_REPLICATE="on")
    eventually(lambda: fleet.balanced(1), timeout=60)
    client = qlite.Client()
    jobs = [client.put("test.fails_once", kwargs={"path": str(fleet.ledger)})
            for _ in range(12)]
    eventually(lambda: waiting_retries(fleet.dir / "a" / "index.db") == 12, timeout=60)
    # The recovery point is Litestream's sync interval (1 s): wait for it to pass.
    eventually(lambda: replica_synced(fleet.dir / "a" / "index.db"), timeout=60)
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    b = fleet.start("b", QLITE_REPLICATE="on")
    eventually(lambda: all_done(jobs, fleet.store), timeout=120, every=0.5)
    fleet.stop_all()

    runs = fleet.runs()
    assert sorted(collections.Counter(r[0] for r in runs).values()) == [2] * 12, runs
    assert sorted((r[1], r[2]) for r in runs) == [(1, a.pid)] * 12 + [(2, b.pid)] * 12
    for job in jobs:
        status = job.status()
        assert (status["state"], status["attempts"]) == ("succeeded", 2), status
        # The first attempt's error came along from a's index too.
        assert [e["message"] for e in status["errors"]] == ["first attempt fails"], status
    assert "keep their attempts" in fleet.log("b")


def test_a_restarted_worker_forgets_the_rows_of_shards_another_worker_took(fleet):
    # a is killed with jobs queued in its index; b takes every shard and runs them. a comes
    # back on the same index: the rows of shards b holds are b's now, so a drops them and
    # qlite stats on a's index counts only what a runs.
    a = fleet.start("a")
    fleet.start("b")
    eventually(lambda: fleet.balanced(2), timeout=90)
    jobs = fleet.put(80, seconds=0.3)
    eventually(lambda: sum(1 for r in fleet.runs() if r[2] == a.pid) >= 4, timeout=60)
    a.send_signal(signal.SIGKILL)
    a.wait(10)
    db = fleet.dir / "a" / "index.db"
    assert unpublished_shards(db), "a's index held no queued rows: nothing to test"
    eventually(lambda: fleet.balanced(1), timeout=4 * LEASE + 30)
    fleet.start("a")
    eventually(lambda: all_done(jobs, fleet.store), timeout=120, every=0.5)

    def truthful():
        stats = run_qlite("stats", "--json", env=fleet.env("a"))
        assert stats.returncode == 0, stats.stderr
        states = json.loads(stats.stdout)["states"]
        return states["queued"] + states["scheduled"] + states["running"] == 0 and states
    eventually(truthful, timeout=60, every=1)
    fleet.stop_all()
    assert "another worker holds now" in fleet.log("a")
    runs = fleet.runs()
    assert {j.status()["state"] for j in jobs} == {"succeeded"}
    assert len({r[0] for r in runs}) == 80


def test_sigterm_hands_over_the_waiting_retries_with_their_attempts_and_errors(fleet):
    # No Litestream: what the waiting retries spent goes in coord/handoff/ on SIGTERM.
    a = fleet.start("a")
    eventually(lambda: fleet.balanced(1), timeout=60)
    client = qlite.Client()
    jobs = [client.put("test.fails_once", kwargs={"path": str(fleet.ledger)})
            for _ in range(12)]
    eventually(lambda: waiting_retries(fleet.dir / "a" / "index.db") == 12, timeout=60)
    b = fleet.start("b")
    eventually(lambda: "joined the fleet" in fleet.log("b"), timeout=60)
    a.send_signal(signal.SIGTERM)
    assert a.wait(60) == 0, fleet.log("a")[-3000:]
    eventually(lambda: all_done(jobs, fleet.store), timeout=120, every=0.5)
    fleet.stop_all()

    runs = fleet.runs()
    assert sorted((r[1], r[2]) for r in runs) == [(1, a.pid)] * 12 + [(2, b.pid)] * 12, runs
    for job in jobs:
        status = job.status()
        assert (status["state"], status["attempts"]) == ("succeeded", 2), status
        assert [e["message"] for e in status["errors"]] == ["first attempt fails"], status
    assert "waiting for a retry in shard" in fleet.log("b")


def test_sleeping_workers_wake_when_one_joins_and_on_a_put(fleet):
    """With the default poll settings the workers sleep on the doorbell once the fleet is
    settled: they renew every 180 s and LIST the inbox every 10 minutes. A joining worker
    rings, so they wake and hand shards over at once; a put rings too."""
    from qlite.worker.fleet import ASLEEP_RENEW, MEMBERS

    def asleep(n: int) -> bool:
        bodies = [json.loads(fleet.store.get(k)) for k in fleet.store.list_etags(MEMBERS)]
        return len(bodies) == n and all(b.get("renew_every") == ASLEEP_RENEW for b in bodies)

    sleepy = {"QLITE_POLL_MAX": "10"}
    fleet.start("a", **sleepy)
    fleet.start("b", **sleepy)
    eventually(lambda: fleet.balanced(2), timeout=90)
    eventually(lambda: asleep(2), timeout=90, what="both members asleep")
    fleet.start("c", **sleepy)
    # Asleep, a and b would see c only at their next renewal in 3 minutes, and hand nothing
    # over before they are woken: the ring of c's join is what makes this quick.
    eventually(lambda: fleet.balanced(3), timeout=90)
    eventually(lambda: asleep(3), timeout=90, what="the three members asleep")
    jobs = fleet.put(12)
    eventually(lambda: all_done(jobs, fleet.store), timeout=90, every=0.5)
    assert {j.status()["state"] for j in jobs} == {"succeeded"}
    fleet.stop_all()
