"""The worker loop's named parts, each on its own: a real SQLite index on disk, an injected
clock, no S3 and no worker process (the loop itself is tested in test_worker.py)."""

import json
import random

import pytest

from qlite import envelope
from qlite.index.db import Index
from qlite.worker.cancels import Cancels
from qlite.worker.counters import Counters
from qlite.worker.execute import Claim, Outcome
from qlite.worker.expiry import Expiry
from qlite.worker.record import record
from qlite.worker.reports import Reports
from qlite.worker.suspects import Suspects

ERROR = {"type": "ValueError", "message": "boom", "traceback": None}


@pytest.fixture
def index(tmp_path):
    index = Index(tmp_path / "i.db")
    yield index
    index.close()


def add_job(index, *, expires_at=None, max_attempts=3):
    env = envelope.make("math.add", [2, 3], queue="default")
    index.insert_jobs([{"id": env["id"], "task": "math.add", "queue": "default",
                        "priority": 0, "max_attempts": max_attempts, "run_at": 0.0,
                        "envelope": json.dumps(env), "inbox_key": f"inbox/default/{env['id']}",
                        "key": None, "enqueued_at": env["enqueued_at"],
                        "expires_at": expires_at}], now=1.0)
    return env["id"]


def claim(index, owner="me", now=1.0):
    [row] = index.claim(("default",), 1, owner, 60.0, now)
    return row, Claim(row.id, row.task, row.queue, row.attempts, row.max_attempts,
                      row.envelope, row.enqueued_at)


def test_a_requested_cancel_raises_the_running_jobs_event(index):
    job_id = add_job(index)
    _, running = claim(index)
    cancels = Cancels()
    event = cancels.open(job_id)
    cancels.check(index, [running], now=1.0)
    assert not event.is_set() and not cancels.requested(job_id)
    index.add_requests([(f"inbox/default/{job_id}.cancel.r1", job_id, "cancel")])
    cancels.check(index, [running], now=1.2)  # looked at twice a second, not more
    assert not event.is_set()
    cancels.check(index, [running], now=1.5)
    assert event.is_set() and cancels.requested(job_id)
    cancels.close(job_id)
    assert not cancels.requested(job_id)


def test_expiry_cancels_jobs_not_started_in_time_and_looks_again_only_when_one_may_be_due(index):
    job_id = add_job(index, expires_at=100.0)
    expiry = Expiry()
    expiry.run(index, now=50.0)
    assert expiry.next_at == 100.0 and index.get(job_id).state == "queued"
    expiry.run(index, now=150.0)
    assert index.get(job_id).state == "cancelled" and expiry.next_at == float("inf")
    expiry.soon()  # new jobs came in
    assert expiry.next_at == 0.0


def test_counters_add_what_grew_since_the_last_flush(index):
    counters = Counters()
    counters.flush(index, {"get": 3, "put": 1}, published=2, now=1.0)
    counters.flush(index, {"get": 5, "put": 1}, published=2, now=2.0)
    totals = {name: row["value"] for name, row in index.counters().items()}
    assert totals == {"s3.get": 5, "s3.put": 1, "jobs.published": 2}


def test_progress_reports_reach_the_index_at_most_once_a_second_the_latest_winning(index):
    job_id = add_job(index)
    claim(index)
    reports = Reports()
    reports.add(job_id, 1, {"done": 1})
    reports.add(job_id, 1, {"done": 2})
    reports.flush(index, "me", now=10.0)
    assert index.get(job_id).progress == {"done": 2}
    reports.add(job_id, 1, {"done": 3})
    reports.flush(index, "me", now=10.5)
    assert index.get(job_id).progress == {"done": 2}
    reports.flush(index, "me", now=11.0)
    assert index.get(job_id).progress == {"done": 3}


def test_a_suspect_holds_every_claim_while_it_runs_or_waits_for_the_others(index):
    job_id = add_job(index)
    claim(index, owner="dead-worker")
    index.reap(["dead-worker"], now=2.0)  # its worker died: it comes back as a suspect
    suspects = Suspects()
    assert suspects.hold(index, ("default",), 3.0, None, busy=True)  # others must drain
    assert not suspects.hold(index, ("default",), 3.0, None, busy=False)
    [row] = index.claim_suspect(("default",), "me", 60.0, 3.0)
    running = Claim(row.id, row.task, row.queue, row.attempts, row.max_attempts,
                    row.envelope, row.enqueued_at)
    assert suspects.started(row, running)
    assert suspects.hold(index, ("default",), 3.0, None, busy=False)
    suspects.ended(job_id)
    assert not suspects.hold(index, ("default",), 3.0, None, busy=False)


def test_record_writes_the_decision_fenced_by_attempt_and_owner(index):
    job_id = add_job(index)
    _, running = claim(index)
    d, ok = record(index, running, Outcome("error", error=ERROR), owner="me", backoff=1.0,
                   cancelled=False, now=5.0, rng=random.Random(1))
    assert (d.state, ok) == ("retry", True)
    row = index.get(job_id)
    assert row.error == ERROR and 5.5 <= row.run_at <= 6.0
    _, again = claim(index, now=10.0)
    d, ok = record(index, again, Outcome("succeeded", result="5"), owner="someone-else",
                   backoff=1.0, cancelled=False, now=11.0, rng=random.Random(1))
    assert (d.state, ok) == ("succeeded", False)  # a stale attempt changes nothing
    assert index.get(job_id).state == "running"
    d, ok = record(index, again, Outcome("succeeded", result="5", progress={"done": 1}),
                   owner="me", backoff=1.0, cancelled=False, now=12.0, rng=random.Random(1))
    done = index.get(job_id)
    assert ok and (done.state, done.result, done.progress) == ("succeeded", 5, {"done": 1})
