"""The worker loop's named parts, each on its own: a real SQLite index on disk, an injected
clock, no S3 (the Pacer's doorbell object is kept in memory) and no worker process (the loop
itself is tested in test_worker.py)."""

import json
import random

import pytest

from qlite import doorbell, envelope
from qlite.index.db import QUERIES, Index
from qlite.index.rows import JobRow
from qlite.settings import Settings
from qlite.worker import pacing
from qlite.worker.cancels import Cancels
from qlite.worker.counters import Counters
from qlite.worker.execute import Claim, Outcome
from qlite.worker.expiry import Expiry
from qlite.worker.pacing import Pacer
from qlite.worker.record import record
from qlite.worker.reports import Reports
from qlite.worker.suspects import Suspects
from qlite.worker.turns import AHEAD_MAX, RECORD_MAX, RECORD_WAIT, Turns, plain, run_in_turn

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


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryBell:
    """The doorbell object in memory with the conditional requests qlite.doorbell makes: this
    test is about the Pacer's timing; test_doorbell.py runs the bell on SeaweedFS."""

    def __init__(self):
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.gets = 0

    def get_etag(self, key):
        self.gets += 1
        return self.objects.get(key)

    def get_if_changed(self, key, etag):
        self.gets += 1
        found = self.objects[key]
        return None if found[1] == etag else found

    def put(self, key, body):
        self.objects[key] = (body, f'"{len(self.objects)}-{body!r}"')

    def put_cas(self, key, body, etag):
        current = self.objects.get(key)
        if (current[1] if current else None) != etag:
            return None
        self.put(key, body)
        return self.objects[key][1]


def test_empty_polls_back_off_to_poll_max_and_a_poll_that_finds_jobs_resets_the_pace():
    clock = Clock()
    pacer = Pacer(Settings(doorbell="off"), MemoryBell(), clock)
    assert pacer.sleeper is None and pacer.due(False, lambda: True)
    paces = []
    for _ in range(6):
        pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
        paces.append(pacer.poll_every)
        assert not pacer.due(False, lambda: True)
        clock.now = pacer.next_poll
        assert pacer.due(False, lambda: True)
    assert paces == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert not pacer.asleep  # the doorbell is off: it never sleeps
    pacer.polled(1, more=False, burst=False, may_sleep=lambda: True)
    assert pacer.poll_every == 0.5 and pacer.next_poll == clock.now + 0.5
    pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
    assert pacer.poll_every == 1.0
    pacer.poll_now()  # a schedule fired: take its job in at once
    assert pacer.due(False, lambda: True)


def arrive(pacer, clock, rate, seconds):
    """Jobs arriving at ``rate`` a second for ``seconds``, each LIST taking in what came since
    the last one (fractions carried over); the LIST intervals the pacer chose."""
    paces, owed, end = [], 0.0, clock.now + seconds
    while clock.now < end:
        step = pacer.next_poll - clock.now
        clock.now = pacer.next_poll
        owed += rate * step
        pacer.polled(int(owed), more=False, burst=False, may_sleep=lambda: True)
        owed -= int(owed)
        paces.append(pacer.poll_every)
    return paces


def test_while_jobs_arrive_the_pacer_lists_about_once_per_per_list_jobs_within_its_bounds():
    clock = Clock()
    pacer = Pacer(Settings(), MemoryBell(), clock)
    pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
    # 50 jobs/s: after a few seconds the LIST comes every PER_LIST / 50 s, not every 0.5 s.
    paces = arrive(pacer, clock, 50, 6)
    assert paces[0] == 0.5  # the first LIST that finds jobs: the rate is not known yet
    assert paces[-1] == pytest.approx(pacing.PER_LIST / 50, rel=0.1)
    assert pacer.arrivals == pytest.approx(50, rel=0.1)
    lists = len(arrive(pacer, clock, 50, 10))
    assert lists / (50 * 10) == pytest.approx(1 / pacing.PER_LIST, rel=0.15)
    # Faster: never more often than POLL_FAST; slower: never less often than QLITE_POLL_MIN.
    assert arrive(pacer, clock, 400, 5)[-1] == pacing.POLL_FAST
    assert arrive(pacer, clock, 5, 5)[-1] == 0.5
    assert not pacer.asleep


def test_a_busy_pacer_backs_off_from_its_pace_and_sleeps_only_after_a_quiet_spell():
    clock, store = Clock(), MemoryBell()
    pacer = Pacer(Settings(), store, clock)
    arrive(pacer, clock, 200, 5)
    assert pacer.poll_every == pacing.POLL_FAST
    found_at, paces = clock.now, []
    while not pacer.asleep:  # the jobs stop
        clock.now = pacer.next_poll
        pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
        paces.append(pacer.poll_every)
    # Two empty LISTs 0.1 s apart are no quiet spell: it sleeps once 1.5 s passed without a
    # job, as after the 0.5 s and 1 s steps of the back-off from QLITE_POLL_MIN.
    assert paces[:3] == [0.2, 0.4, 0.8] and clock.now - found_at == pytest.approx(1.5)
    assert json.loads(store.objects[doorbell.KEY][0])["asleep"] is True


def test_more_pages_to_read_are_listed_at_poll_min_and_an_empty_page_ends_the_rate():
    clock = Clock()
    pacer = Pacer(Settings(poll_min=0.3), MemoryBell(), clock)
    pacer.polled(0, more=False, burst=False, may_sleep=lambda: False)
    clock.now = pacer.next_poll
    pacer.polled(1000, more=True, burst=False, may_sleep=lambda: True)  # a backlog, page 1
    assert pacer.poll_every == 0.3 and pacer.next_poll == clock.now + 0.3
    clock.now = pacer.next_poll
    pacer.polled(0, more=True, burst=False, may_sleep=lambda: True)  # known jobs, page 2
    assert pacer.poll_every == 0.3 and pacer.quiet_polls == 0
    rate = pacer.arrivals
    assert rate > 100
    for _ in range(5):
        clock.now = pacer.next_poll
        pacer.polled(0, more=False, burst=False, may_sleep=lambda: False)
    assert pacer.arrivals < rate / 100  # the backlog is no arrival rate for long


def test_a_quiet_pacer_sleeps_on_the_bell_lists_once_more_then_only_on_a_ring():
    clock, store = Clock(), MemoryBell()
    pacer = Pacer(Settings(), store, clock)
    pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
    assert not pacer.asleep  # one empty LIST is not a quiet spell
    clock.now = pacer.next_poll
    pacer.polled(0, more=False, burst=False, may_sleep=lambda: False)
    assert not pacer.asleep and not store.objects  # the loop is not idle: no write
    clock.now = pacer.next_poll
    pacer.polled(0, more=False, burst=True, may_sleep=lambda: True)
    assert not pacer.asleep  # --burst never sleeps
    clock.now = pacer.next_poll
    pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
    assert pacer.asleep and json.loads(store.objects[doorbell.KEY][0])["asleep"] is True
    # One more LIST once every producer's cached "awake" read is older than the write.
    assert pacer.poll_every == doorbell.CACHE + 0.25
    assert pacer.wait(clock.now, burst=False, beat_at=clock.now + 5,
                      publish_at=clock.now + 5) == pytest.approx(doorbell.EVERY)  # the bell's turn
    gets = store.gets
    assert not pacer.due(False, lambda: True) and store.gets == gets  # not yet the bell's turn
    clock.now += doorbell.EVERY
    assert not pacer.due(False, lambda: True) and store.gets == gets + 1  # unchanged (304)
    clock.now = pacer.next_poll
    assert pacer.due(False, lambda: True)  # the closing LIST
    pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
    assert pacer.asleep and pacer.poll_every == pacer.safety == doorbell.SAFETY
    # Asleep, the bell is asked at a fixed rate, and the loop never waits a full second.
    for _ in range(3):
        clock.now = pacer.next_bell
        assert not pacer.due(False, lambda: True)
    assert store.gets == gets + 4
    assert doorbell.Bell(store).ring_if_asleep()  # a producer's put rings
    clock.now = pacer.next_bell - 0.1
    assert not pacer.due(False, lambda: True)  # rung, but heard only at the bell's next turn
    clock.now = pacer.next_bell
    assert pacer.due(False, lambda: True) and not pacer.asleep
    assert pacer.poll_every == 0.5 and pacer.quiet_polls == 0


def test_a_job_found_or_started_wakes_a_sleeping_pacer():
    clock = Clock()
    pacer = Pacer(Settings(), MemoryBell(), clock)
    for _ in range(2):
        pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
    assert pacer.asleep
    pacer.wake()  # the loop started a scheduled job
    assert not pacer.asleep and pacer.due(False, lambda: True)
    for _ in range(2):
        pacer.polled(0, more=False, burst=False, may_sleep=lambda: True)
    assert pacer.asleep
    pacer.polled(1, more=False, burst=False, may_sleep=lambda: True)  # the safety LIST found jobs
    assert not pacer.asleep and pacer.poll_every == 0.5


def test_the_loop_waits_for_the_first_thing_due_and_never_a_full_second():
    pacer = Pacer(Settings(doorbell="off"), MemoryBell(), Clock(0.0))
    pacer.next_poll = 5.0

    def wait(**kw):
        return pacer.wait(0.0, **{"burst": False, "beat_at": 9.0, "publish_at": 9.0, **kw})

    assert wait() == 1.0  # a signal is noticed within a second
    assert wait(due=(None, 0.3)) == 0.3  # a job runnable, or a schedule firing
    assert wait(due=(-2.0,)) == 0.01  # overdue: a short breath, not a busy spin
    assert wait(due=(0.3,), outage=0.6) == 0.6  # after a failed step: its back-off
    assert wait(beat_at=0.2) == 0.2 and wait(publish_at=0.1) == 0.1
    assert wait(burst=True) == 0.05
    assert wait(beat_at=-1.0) == 0.0


def test_quick_jobs_are_claimed_ahead_by_their_run_times_up_to_a_cap():
    turns = Turns()
    assert turns.ahead(1) == 0  # nothing measured yet: a job is taken to last a second
    for _ in range(60):
        turns.ran(0.01, 10)  # 1 ms each
    assert turns.ahead(1) == AHEAD_MAX  # 50 ms of work is 50 jobs: capped
    for _ in range(60):
        turns.ran(0.2, 1)  # slow jobs: none ahead
    assert turns.ahead(4) == 0


def test_finished_jobs_wait_for_their_batch_at_most_record_wait_or_record_max():
    now = [10.0]
    turns = Turns(clock=lambda: now[0])
    claim_ = Claim("j", "t", "q", 1, 3, {}, "")
    assert not turns.record_due(stopping=False, blocked=False)  # nothing finished
    turns.ready.append(JobRow("next"))
    turns.ended(claim_, Outcome("succeeded", result="1"))
    assert turns and turns.wait() == RECORD_WAIT
    assert not turns.record_due(stopping=False, blocked=False)  # the next job runs first
    assert turns.record_due(stopping=True, blocked=False)
    assert turns.record_due(stopping=False, blocked=True)
    now[0] += RECORD_WAIT
    assert turns.record_due(stopping=False, blocked=False)
    now[0] -= RECORD_WAIT
    for _ in range(RECORD_MAX - 1):
        turns.ended(claim_, Outcome("succeeded", result="1"))
    assert turns.record_due(stopping=False, blocked=False)
    turns.ready.clear()
    turns.left([])
    assert not turns and turns.wait() is None


def test_jobs_run_in_turn_stop_when_the_worker_stops_and_a_crash_is_an_outcome():
    stop = [False]

    def run_one(c):
        if c.id == "b":
            stop[0] = True
            raise SystemExit(3)
        return Outcome("succeeded", result="1")

    claims = [Claim(i, "t", "q", 1, 3, {}, "") for i in "abc"]
    outcomes = run_in_turn(run_one, claims, lambda: stop[0])
    assert [o.state for o in outcomes] == ["succeeded", "error"]  # c never started
    assert outcomes[1].error["type"] == "SystemExit"
    assert plain(outcomes[0], None) and not plain(outcomes[1], None)
    assert not plain(Outcome("succeeded", result="1", logs=[{"msg": "x"}]), None)


def test_successes_are_recorded_in_one_statement_and_a_stale_one_is_told_apart(index):
    ids = [add_job(index) for _ in range(3)]
    rows = index.claim(("default",), 3, "me", 60.0, 1.0)
    assert {r.id for r in rows} == set(ids)
    assert index.succeed_many([(r.id, r.attempts, "5") for r in rows[:2]], "me", 2.0) == {
        rows[0].id, rows[1].id}
    # the third was reaped and claimed again by another worker: its old attempt is stale
    index.conn.execute("UPDATE jobs SET owner = 'other', attempts = 2 WHERE id = ?",
                       (rows[2].id,))
    index.conn.commit()
    assert index.succeed_many([(rows[2].id, 1, "5")], "me", 2.0) == set()
    assert index.get(rows[0].id).state == "succeeded"
    assert index.get(rows[0].id).result == 5
    assert index.get(rows[0].id).attempt_log[0].outcome == "succeeded"
    assert index.get(rows[2].id).state == "running"
    # no attempts row for a success recorded in a batch: its job row (owner kept) is the record
    assert index.conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0
    done = index.get(rows[0].id)
    assert [(a.attempt, a.owner, a.started_at, a.finished_at, a.outcome)
            for a in done.attempt_log] == [(1, "me", done.started_at, done.finished_at,
                                            "succeeded")]
    assert len(index.read("stats_run_times", since=envelope.now_rfc3339(0.0))) == 2
    # first attempts: the two successes (the third job is on its second attempt)
    assert len(index.read("stats_wait_times", since=envelope.now_rfc3339(0.0))) == 2


def test_jobs_claimed_ahead_and_never_started_are_given_back_uncounted(index):
    job_id = add_job(index)
    [row] = index.claim(("default",), 1, "me", 60.0, 1.0)
    assert index.unclaim([(job_id, 1)], "other") == 0  # fenced by owner
    assert index.unclaim([(job_id, 1)], "me") == 1
    job = index.get(job_id)
    assert (job.state, job.attempts, job.owner, job.attempt_log) == ("queued", 0, None, [])
    [again] = index.claim(("default",), 1, "me", 60.0, 2.0)
    assert again.attempts == 1


def test_an_attempt_is_written_as_one_row_when_it_ends_and_read_from_its_job_while_it_runs(
        index):
    job_id = add_job(index)
    claim(index, now=1.0)
    def rows():
        return index.conn.execute("SELECT attempt, owner, started_at, outcome FROM attempts "
                                  "WHERE job_id = ?", (job_id,)).fetchall()
    assert rows() == []  # the claim counted the attempt in the job's row only
    start = envelope.now_rfc3339(1.0)
    assert [(a.attempt, a.owner, a.started_at, a.outcome) for a in
            index.get(job_id).attempt_log] == [(1, "me", start, None)]
    assert index.finish(job_id, 1, "me", "snooze", run_at=1.5, now=1.2)
    assert rows() == [(1, "me", start, "snooze")]
    claim(index, owner="w2", now=2.0)  # the snoozed attempt given back: 1 again, running
    assert [(a.attempt, a.owner, a.outcome) for a in index.get(job_id).attempt_log] == [
        (1, "w2", None)]
    index.reap(["w2"], now=3.0)
    assert rows() == [(1, "w2", envelope.now_rfc3339(2.0), "lost")]
    assert [(a.attempt, a.outcome) for a in index.get(job_id).attempt_log] == [(1, "lost")]


def test_an_index_of_an_older_qlite_takes_the_leaner_indexes(tmp_path):
    index = Index(tmp_path / "i.db")
    index.conn.execute("CREATE INDEX jobs_pack ON jobs (pack, state) WHERE pack IS NOT NULL")
    index.conn.execute("CREATE INDEX jobs_unpublished ON jobs (finished_at) "
                       "WHERE published = 0 AND state IN ('succeeded', 'failed', 'cancelled')")
    index.conn.commit()
    index.close()
    index = Index(tmp_path / "i.db")
    names = {r[0] for r in index.conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'index'")}
    assert {"jobs_outbox", "jobs_packed"} <= names
    assert not {"jobs_pack", "jobs_unpublished"} & names
    # the publisher's scan uses the outbox index (its condition repeated word for word)
    plan = index.conn.execute("EXPLAIN QUERY PLAN " + QUERIES["unpublished_keys"],
                              {"exclude": "[]", "n": 10}).fetchall()
    assert any("jobs_outbox" in r[3] for r in plan), plan
    index.close()


def test_quick_jobs_go_to_as_few_handler_threads_as_keep_each_busy():
    turns = Turns()
    turns.ready.extend(JobRow(str(i)) for i in range(36))
    assert turns.share(4) == 9  # run times unknown: spread over the slots
    for _ in range(60):
        turns.ran(0.0001, 1)  # 0.1 ms each: 36 of them are one thread's work
    assert turns.share(4) >= 36
    for _ in range(60):
        turns.ran(0.002, 1)  # 2 ms each: a few per thread, over every slot
    assert turns.share(4) == 9
