"""The doorbell (qlite/doorbell.py): an idle worker sleeps on a conditional GET of
coord/doorbell.json, a producer rings it after a put, a producer that cannot ring is covered by
the sleeping worker's safety LIST, and a sleeping worker writes nothing to its index."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from faultproxy import FaultProxy

import qlite
from conftest import eventually
from qlite import doorbell
from qlite.store import Store
from qlite.worker.fleet import ASLEEP_RENEW
from qlite.worker.loop import Worker

app = qlite.App()


@app.task(name="bell.echo")
def echo(x):
    return x


@pytest.fixture
def sleepy(seaweed_target):
    """The default poll settings (QLITE_POLL_MAX 10 s): the worker sleeps once idle."""
    env = {k: v for k, v in seaweed_target.env.items() if not k.startswith("QLITE_POLL")}
    seaweed_target.env.clear()
    # _maintain every second (it must not write); fleet ticks every second (settled sooner)
    seaweed_target.env.update(env, QLITE_LEASE="3", QLITE_FLEET_LEASE="3")
    return seaweed_target


class Running:
    """A Worker on a thread of this process, stopped at the end of the test."""

    def __init__(self, target, safety: float | None = None):
        self.worker = Worker(app, target.settings())
        if safety is not None:
            self.worker.pacer.safety = safety
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def asleep(self) -> bool:
        """Asleep, and the closing LIST after the asleep write is done."""
        w = self.worker
        return w.pacer.asleep and w.pacer.poll_every == w.pacer.safety

    def stop(self) -> None:
        self.worker.stopping = True
        self.thread.join(60)


def state(target, job_id: str) -> str:
    return qlite.Client(target.url).status(job_id)["state"]


def bell(target) -> dict:
    store = Store(target.settings().require_url(), target.env["AWS_ENDPOINT_URL_S3"])
    return json.loads(store.get(doorbell.KEY))


def test_a_job_put_while_the_worker_sleeps_starts_on_the_ring(sleepy):
    running = Running(sleepy)
    try:
        eventually(running.asleep, what="the worker asleep on the doorbell")
        assert bell(sleepy)["asleep"] is True
        lists = running.worker.store.requests["list"]
        client = qlite.Client(sleepy.url)
        job = client.put("bell.echo", [1])
        assert bell(sleepy)["asleep"] is False  # rung
        # The next safety LIST is 10 minutes away: only the ring can start it this soon.
        eventually(lambda: state(sleepy, job.id) == "succeeded", timeout=60,
                   what="the job done after the ring")
        assert running.worker.store.requests["list"] - lists < 10
        # A busy producer reads the bell at most once a second, whatever it puts.
        gets = client.store.requests["get"]
        for i in range(20):
            client.put("bell.echo", [i])
        assert client.store.requests["get"] - gets <= 3
    finally:
        running.stop()


def test_a_put_by_a_producer_that_cannot_read_the_doorbell_is_taken_in_by_the_safety_list(
        sleepy):
    running = Running(sleepy, safety=4.0)
    try:
        eventually(running.asleep, what="the worker asleep on the doorbell")
        with FaultProxy(sleepy.env["AWS_ENDPOINT_URL_S3"]) as proxy:
            # A producer allowed PutObject on inbox/ only, as a bucket policy may say.
            proxy.refuse = lambda method, path: "/inbox/" not in path
            client = qlite.Client(sleepy.url, endpoint_url=proxy.endpoint)
            job = client.put("bell.echo", [2])  # the put succeeds; the ring fails quietly
        assert client.store.requests["get"] == 1  # it tried to read the bell, once
        assert bell(sleepy)["asleep"] is True  # nobody rang
        eventually(lambda: state(sleepy, job.id) == "succeeded", timeout=60,
                   what="the job taken in by the safety LIST")
    finally:
        running.stop()


def test_a_sleeping_worker_writes_nothing_to_its_index(sleepy):
    running = Running(sleepy)
    try:
        eventually(running.asleep, what="the worker asleep on the doorbell")
        watcher = sqlite3.connect(sleepy.db)
        before = watcher.execute("PRAGMA data_version").fetchone()[0]
        maintained = running.worker.next_beat
        gets = running.worker.store.requests["get"]
        # Three maintenance passes (lease 3 s: every second) and a few polls of the bell.
        eventually(lambda: running.worker.next_beat > maintained + 2.5
                   and running.worker.store.requests["get"] >= gets + 3,
                   what="three maintenance passes while asleep")
        assert running.asleep()
        # data_version changes when another connection commits to the file.
        assert watcher.execute("PRAGMA data_version").fetchone()[0] == before
        watcher.close()
        # Its fleet member advertises the asleep renewal interval: observers wait for it.
        store = running.worker.store
        mid = running.worker.shards.fleet.mid
        eventually(lambda: json.loads(store.get(f"coord/members/{mid}.json"))
                   .get("renew_every") == ASLEEP_RENEW, what="the asleep member object")
        assert running.worker.shards.fleet.trusted()
    finally:
        running.stop()


def test_a_worker_start_writes_the_bell_awake_and_never_over_another(sleepy):
    store = Store(sleepy.settings().require_url(), sleepy.env["AWS_ENDPOINT_URL_S3"])
    running = Running(sleepy)
    try:  # written before the first LIST: a producer's read finds it (no 404)
        eventually(lambda: running.worker.pacer.listed_at is not None, timeout=60)
        assert store.exists(doorbell.KEY)
    finally:
        running.stop()
    store.delete(doorbell.KEY)
    doorbell.ensure(store)
    assert bell(sleepy)["asleep"] is False and bell(sleepy)["ring"] == 0
    assert doorbell.Sleeper(store).sleep()  # a worker falls asleep, then another one starts
    doorbell.ensure(store)
    assert bell(sleepy)["asleep"] is True  # not overwritten: a ring would still wake it
    assert doorbell.Bell(store).ring_if_asleep()
    assert bell(sleepy)["ring"] == 1
    doorbell.ensure(store)
    assert bell(sleepy)["ring"] == 1
    running = Running(sleepy)  # a worker's start leaves it as it is, too
    try:
        eventually(lambda: running.worker.pacer.listed_at is not None, timeout=60)
        assert bell(sleepy)["ring"] == 1
    finally:
        running.stop()


def test_with_the_doorbell_off_nobody_reads_or_writes_it(sleepy):
    sleepy.env["QLITE_DOORBELL"] = "off"
    running = Running(sleepy)
    try:
        assert running.worker.pacer.sleeper is None
        job = qlite.Client(sleepy.url).put("bell.echo", [3])
        eventually(lambda: state(sleepy, job.id) == "succeeded", timeout=60)
        assert not running.worker.store.exists(doorbell.KEY)
    finally:
        running.stop()


def test_a_ring_between_the_read_and_the_asleep_write_keeps_the_worker_awake(sleepy):
    store = Store(sleepy.settings().require_url(), sleepy.env["AWS_ENDPOINT_URL_S3"])
    sleeper = doorbell.Sleeper(store)
    assert sleeper.sleep()
    producer = doorbell.Bell(store, clock=iter(range(0, 100, 5)).__next__)
    assert producer.ring_if_asleep()  # asleep: rings
    assert not producer.ring_if_asleep()  # awake now: no second ring
    assert sleeper.rung()
    sleeper.wake()

    class Racing:  # a producer rings after the sleeper's read, before its write
        def __getattr__(self, name):
            return getattr(store, name)

        def put_cas(self, key, body, etag):
            store.put(key, json.dumps({"v": 1, "asleep": False, "ring": 99,
                                       "at": time.time()}).encode())
            return store.put_cas(key, body, etag)

    racing = doorbell.Sleeper(Racing())
    assert not racing.sleep()
    assert not racing.asleep


def test_observers_wait_for_a_sleeping_member_as_long_as_its_object_says(seaweed_target):
    """In process, with Fleet objects on clocks of their own and no renewal thread."""
    from qlite.worker.fleet import Fleet

    store = Store(seaweed_target.settings().require_url(),
                  seaweed_target.env["AWS_ENDPOINT_URL_S3"])
    now = {"a": 0.0, "b": 0.0}
    a = Fleet(store, node="na", owner="elsewhere:1:1", shards=4, lease=30,
              clock=lambda: now["a"])
    a._config()
    a._join()
    a.tick()
    a.set_asleep(True)
    a._renew()  # what its renewal thread does when poked: the object says 180 s now
    assert a.trusted_until == pytest.approx(3 * ASLEEP_RENEW - a.margin)
    b = Fleet(store, node="nb", owner="elsewhere:2:2", shards=4, lease=30,
              clock=lambda: now["b"])
    b._config()
    b._join()
    b.tick()
    assert b.patience(b.members[a.mid].body) == 3 * ASLEEP_RENEW
    now["b"] += 5 * 30  # five leases: an awake member would be dead by now
    b.tick()
    assert a.mid in b._live(now["b"]) and not b.owned & a.owned
    # It wakes and renews every 10 s again: the observer reads that from the new version.
    now["a"] += 1
    a.set_asleep(False)
    a._renew()
    b.tick()
    assert b.patience(b.members[a.mid].body) == 30
    now["b"] += 31  # and then stops renewing: dead after one lease, its shards taken
    b.tick()
    b.tick()
    assert a.mid not in b._live(now["b"])
    assert b.owned == frozenset(range(4))


def test_a_member_asleep_at_a_ring_that_does_not_renew_within_a_lease_is_dead(seaweed_target):
    """A ring wakes every live sleeper, which renews at once; so a member that died asleep is
    taken over a lease after the next ring (work for it), not after its 9 minutes of patience.
    In process, with Fleet objects on clocks of their own and no renewal thread."""
    from qlite.worker.fleet import Fleet

    store = Store(seaweed_target.settings().require_url(),
                  seaweed_target.env["AWS_ENDPOINT_URL_S3"])
    now = {"a": 0.0, "b": 0.0, "c": 0.0}

    def member(name: str) -> Fleet:
        f = Fleet(store, node=f"n{name}", owner=f"elsewhere:{name}:1", shards=4, lease=30,
                  clock=lambda: now[name])
        f._config()
        f._join()
        f.tick()
        return f

    a, c = member("a"), member("c")
    for sleeper in (a, c):
        sleeper.set_asleep(True)
        sleeper._renew()
    assert doorbell.Sleeper(store).sleep()
    b = member("b")
    b.tick()
    now["b"] += 2 * 30  # two leases, no ring: both sleepers are alive
    b.tick()
    assert {a.mid, c.mid} <= set(b._live(now["b"]))

    assert doorbell.Bell(store).ring_if_asleep()  # a put for them
    b.tick()
    # c wakes on the ring: nothing of it starts before its renewal lands; a is dead.
    now["c"] += 1
    c.set_asleep(False)
    assert not c.trusted()
    c._renew()
    assert c.trusted()
    b.tick()
    now["b"] += 25
    now["c"] += 10
    c._renew()  # awake, it renews every third of the lease
    b.tick()
    now["b"] += 6  # a lease and a second after the ring
    b.tick()
    live = b._live(now["b"])
    assert c.mid in live and a.mid not in live
