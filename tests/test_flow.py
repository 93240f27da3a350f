"""Flow control against real S3 servers and a real SQLite file: expiry, cancel, retry, purge,
queues and priorities, per-task limits, periodic jobs (with an injected clock)."""

import math
import os
import random
import threading
import time

import pytest

import qlite
from conftest import bucket_keys, drain_with, eventually, start_worker
from conftest import qlite as run_qlite
from qlite import envelope
from qlite.index.db import QUERIES, Index
from qlite.worker.loop import Worker

app = qlite.App(queues=["high", "low"])
ran: list = []
spans: list = []
started = threading.Event()


@app.task(name="f.tag")
def tag(ctx, value):
    ran.append((value, ctx.queue))
    return value


@app.task(name="f.until_cancelled")
def until_cancelled(ctx):
    started.set()
    deadline = time.monotonic() + 30
    while not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    raise RuntimeError("stopped early")


@app.task(name="f.sleep_in_child", timeout=60, max_attempts=1)
def sleep_in_child(path):
    open(path, "w").close()  # tells the test the child runs
    time.sleep(60)


@app.task(name="f.fail_twice", max_attempts=2, backoff=0.01)
def fail_twice(ctx):
    if ctx.attempt <= 2:
        raise ValueError(f"failure on attempt {ctx.attempt}")
    return ctx.attempt


@app.task(name="f.one_at_a_time", concurrency=1)
def one_at_a_time(i):
    spans.append(("start", i))
    time.sleep(0.05)
    spans.append(("end", i))


@app.task(name="f.rated", rate="4/s", rate_key="api")
def rated(i):
    return i


app.spec = f"{__name__}:app"  # child processes load this app by name



def drain(s3, jobs, timeout=30.0, settings=None, worker=None) -> list[dict]:
    return drain_with(app, s3, jobs, timeout, settings, worker)


keys = bucket_keys


# -- expiry -------------------------------------------------------------------------------


def test_a_job_not_started_before_its_ttl_ends_cancelled_as_expired(s3):
    ran.clear()
    client = qlite.Client()
    late = client.put("f.tag", ["late"], ttl=5)
    fresh = client.put("f.tag", ["fresh"], ttl=3600)
    later = lambda: time.time() + 10  # noqa: E731 - the worker comes 10 s after the puts
    statuses = drain(s3, [late, fresh], worker={"clock": later})
    assert [s["state"] for s in statuses] == ["cancelled", "succeeded"]
    assert statuses[0]["error"]["type"] == "Expired"
    assert "not started before it expired" in statuses[0]["error"]["message"]
    assert ran == [("fresh", "default")]
    assert keys(s3, "inbox/") == []


def test_a_ttl_shorter_than_the_delay_is_refused():
    with pytest.raises(qlite.ConfigError, match="would expire before it may run"):
        qlite.Client("s3://bucket/p").put("f.tag", ["x"], delay=60, ttl=30)
    with pytest.raises(qlite.ConfigError, match="ttl: expected seconds >= 0"):
        qlite.Client("s3://bucket/p").put("f.tag", ["x"], ttl=-1)


# -- cancel, retry, purge ---------------------------------------------------------------------


def test_a_job_cancelled_before_the_worker_saw_it_never_runs(s3):
    ran.clear()
    client = qlite.Client()
    job = client.put("f.tag", ["never"])
    assert client.cancel(job.id)["state"] == "pending"
    [status] = drain(s3, [job])
    assert status["state"] == "cancelled" and status["error"]["type"] == "Cancelled"
    assert ran == []
    assert keys(s3, "inbox/") == []  # the job and its request marker are both gone


def test_a_scheduled_job_cancelled_in_the_index_never_runs(s3):
    ran.clear()
    client = qlite.Client()
    job = client.put("f.tag", ["later"], delay=3600)
    Worker(app, s3.settings()).run(burst=True)  # takes it in as scheduled
    assert Index(s3.db).get(job.id).state == "scheduled"
    client.cancel(job.id)
    [status] = drain(s3, [job])
    assert status["state"] == "cancelled" and ran == []


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_a_running_job_sees_ctx_cancelled_and_ends_cancelled(s3):
    started.clear()
    client = qlite.Client()
    job = client.put("f.until_cancelled")
    worker = Worker(app, s3.settings())
    thread = run_in_thread(worker)
    try:
        assert started.wait(30)
        client.cancel(job.id)
        status = job.wait(timeout=30)
    finally:
        worker.stopping = True
        thread.join(30)
    assert status["state"] == "cancelled" and status["attempts"] == 1
    assert status["error"]["message"] == "cancelled on request while running attempt 1"


def test_a_running_child_process_job_is_killed_on_cancel(s3, tmp_path):
    client = qlite.Client()
    flag = tmp_path / "child-started"
    job = client.put("f.sleep_in_child", [str(flag)])
    worker = Worker(app, s3.settings())
    thread = run_in_thread(worker)
    try:
        eventually(flag.exists, what="the child's start")
        client.cancel(job.id)
        status = job.wait(timeout=30)
    finally:
        worker.stopping = True
        thread.join(30)
    assert status["state"] == "cancelled"


def test_cancel_of_a_finished_job_and_retry_of_a_succeeded_one_are_refused(s3):
    client = qlite.Client()
    job = client.put("f.tag", ["done"])
    drain(s3, [job])
    with pytest.raises(qlite.JobStateError, match="is succeeded: finished, so it cannot be"):
        client.cancel(job.id)
    with pytest.raises(qlite.JobStateError,
                       match="is succeeded: not failed or cancelled, so it cannot be retried$"):
        client.retry(job.id)
    for command in ("cancel", "retry"):
        r = run_qlite(command, job.id, env=s3.env)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.startswith("Error: job ") and r.stderr.count("\n") == 1


def test_retry_runs_a_failed_job_again_and_keeps_its_history(s3):
    client = qlite.Client()
    job = client.put("f.fail_twice")
    [failed] = drain(s3, [job])
    assert (failed["state"], failed["attempts"]) == ("failed", 2)
    r = run_qlite("retry", job.id, env=s3.env)
    assert r.returncode == 0, r.stderr
    assert "retry requested" in r.stdout
    [status] = drain(s3, [job])
    assert (status["state"], status["result"], status["attempts"]) == ("succeeded", 3, 3)
    assert [e["message"] for e in status["errors"]] == ["failure on attempt 1",
                                                       "failure on attempt 2"]
    assert keys(s3, "inbox/") == []


def test_purge_forgets_finished_jobs_and_so_frees_their_idempotency_key(s3):
    ran.clear()
    client = qlite.Client()
    first = client.put("f.tag", ["keyed"], key="report-2026-11")
    drain(s3, [first])
    r = run_qlite("purge", "--state", "succeeded", "--older-than", "0", env=s3.env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("purged 1 job(s)")
    assert Index(s3.db).get(first.id) is None and keys(s3, "results/") == []
    again = client.put("f.tag", ["keyed"], key="report-2026-11")
    assert again.id == first.id
    drain(s3, [again])
    assert ran == [("keyed", "default"), ("keyed", "default")]


def test_purge_as_a_library_call_keeps_younger_jobs_and_other_states(s3):
    from qlite.index.purge import purge

    client = qlite.Client()
    jobs = [client.put("f.tag", [i]) for i in range(3)]
    drain(s3, jobs)
    index = Index(s3.db)
    kept = purge(index, client.store, 3600, states=["failed"])
    assert (kept.jobs, kept.states) == (0, ("failed",))
    assert purge(index, client.store, 3600).jobs == 0  # finished just now: younger than 1h
    done = purge(index, client.store, 0, now=time.time() + 1)
    assert (done.jobs, done.states) == (3, ("succeeded", "failed", "cancelled"))
    assert keys(s3, "results/") == [] and all(index.get(j.id) is None for j in jobs)
    with pytest.raises(qlite.ConfigError, match="only finished jobs can be purged.*'queued'"):
        purge(index, client.store, 0, states=["queued"])


def test_purge_deletes_old_markers_whose_job_never_arrived(s3):
    from qlite import envelope
    from qlite.index.purge import purge

    client = qlite.Client()
    waiting = client.put("f.tag", ["later"], delay=3600)
    kept = envelope.marker_key("default", waiting.id, "retry", envelope.new_id())
    never = envelope.marker_key("default", envelope.new_id(), "cancel", envelope.new_id())
    client.put_object(kept, b"{}")
    client.put_object(never, b"{}")
    Worker(app, s3.settings()).run(burst=True)  # takes the markers in
    index = Index(s3.db)
    assert purge(index, client.store, 3600).markers == 0  # taken in just now: younger
    done = purge(index, client.store, 0, now=time.time() + 1)
    assert done.markers == 1
    left = keys(s3, "inbox/")
    assert kept in left and len(left) == 2
    assert [envelope.parse_inbox_key(k) for k in left if k != kept] == [("default", waiting.id)]
    r = run_qlite("purge", "--older-than", "0", env=s3.env)
    assert r.returncode == 0 and "marker" not in r.stdout, r.stderr


def test_purge_refuses_unfinished_states_and_bad_ages(s3):
    r = run_qlite("purge", "--state", "running", "--older-than", "1d", env=s3.env)
    assert r.returncode == 1 and "only finished jobs can be purged" in r.stderr
    r = run_qlite("purge", "--older-than", "soon", env=s3.env)
    assert r.returncode == 1 and "--older-than: expected an age such as 30d" in r.stderr


# -- queues and priorities --------------------------------------------------------------------


def test_strict_queue_order_then_priority_then_fifo(s3):
    ran.clear()
    client = qlite.Client()
    jobs = [client.put("f.tag", ["low-1"], queue="low"),
            client.put("f.tag", ["high-p0-a"], queue="high"),
            client.put("f.tag", ["high-p5"], queue="high", priority=5),
            client.put("f.tag", ["high-p0-b"], queue="high")]
    drain(s3, jobs, settings={"queues": ("high", "low"), "concurrency": 1})
    assert [v for v, _ in ran] == ["high-p5", "high-p0-a", "high-p0-b", "low-1"]


def test_a_lifo_queue_runs_its_newest_jobs_first_after_priority(s3):
    ran.clear()
    client = qlite.Client()
    jobs = [client.put("f.tag", ["fifo-1"], queue="low"),
            client.put("f.tag", ["old"], queue="latest"),
            client.put("f.tag", ["p5"], queue="latest", priority=5),
            client.put("f.tag", ["new"], queue="latest"),
            client.put("f.tag", ["fifo-2"], queue="low")]
    drain(s3, jobs, settings={"queues": ("latest", "low"), "lifo": ("latest",),
                              "concurrency": 1})
    assert [v for v, _ in ran] == ["p5", "new", "old", "fifo-1", "fifo-2"]


def test_the_lifo_claim_reads_its_own_index_and_fifo_jobs_stay_out_of_it(tmp_path):
    index = Index(tmp_path / "i.db")
    index.set_lifo(["latest"])
    now = time.time()
    index.insert_jobs([{"id": envelope.new_id(), "task": "t", "queue": q, "priority": 0,
                        "max_attempts": 1, "run_at": now, "envelope": "{}", "inbox_key": "k",
                        "key": None, "enqueued_at": "x"} for q in ("latest", "default")])
    lifo = index.conn.execute("SELECT count(*) FROM jobs INDEXED BY jobs_lifo WHERE lifo = 1 "
                              "AND state IN ('queued', 'scheduled')").fetchone()[0]
    assert lifo == 1
    for query, used in (("claim", "jobs_runnable"), ("claim_lifo", "jobs_lifo")):
        plan = " ".join(row[-1] for row in index.conn.execute(
            "EXPLAIN QUERY PLAN " + QUERIES[query],
            {"queue": "latest", "now": now, "now_iso": "x", "lease_until": now, "owner": "o",
             "blocked": "[]", "shards": None, "nshards": 1, "n": 1}))
        assert used in plan and "TEMP B-TREE" not in plan, plan  # the order comes sorted
    index.set_lifo([])  # no longer LIFO: its waiting job goes back to the FIFO claim
    assert index.claim(("latest",), 1, "o", 60.0)[0].queue == "latest"
    index.close()


def test_weighted_queues_share_the_worker_by_their_weights(s3):
    ran.clear()
    client = qlite.Client()
    jobs = client.put_many([{"task": "f.tag", "args": [q], "queue": q}
                            for q in ("high", "low") for _ in range(40)])
    drain(s3, jobs, settings={"queues": ("high=3", "low=1"), "concurrency": 1},
          worker={"rng": random.Random(7)})
    first = [v for v, _ in ran[:40]]
    assert 22 <= first.count("high") <= 36 and "low" in first  # about 3 in 4, not strict


def test_a_worker_serves_a_queue_no_task_declares_with_a_warning(s3):
    job = qlite.Client().put("math.add", [2, 3], queue="low")
    r = run_qlite("worker", "--app", "testapp:app", "--queue", "low", "--burst", env=s3.env)
    assert r.returncode == 0, r.stderr
    assert "--queue low: no task of this app declares that queue" in r.stderr
    assert job.status()["result"] == 5
    r = run_qlite("worker", "--app", "testapp:app", "--queue", "default=x", env=s3.env)
    assert r.returncode == 1 and "queue weight in 'default=x'" in r.stderr


# -- limits -----------------------------------------------------------------------------------


def test_a_task_concurrency_limit_holds_its_jobs_without_taking_slots(s3):
    spans.clear()
    ran.clear()
    client = qlite.Client()
    limited = [client.put("f.one_at_a_time", [i]) for i in range(5)]
    others = [client.put("f.tag", [f"other-{i}"]) for i in range(4)]
    drain(s3, limited + others, settings={"concurrency": 4})
    depth = peak = 0
    for kind, _ in spans:
        depth += 1 if kind == "start" else -1
        peak = max(peak, depth)
    assert peak == 1 and len(spans) == 10
    assert len(ran) == 4


def test_a_rate_limit_spaces_starts_over_any_window(s3):
    client = qlite.Client()
    jobs = [client.put("f.rated", [i]) for i in range(10)]
    drain(s3, jobs, settings={"concurrency": 4})
    index = Index(s3.db)
    starts = sorted(qlite.envelope.parse_time(index.get(j.id).attempt_log[0].started_at)
                    for j in jobs)
    # "4/s": no five starts within one second (claim times, recorded to the millisecond).
    assert all(b - a >= 0.999 for a, b in zip(starts, starts[4:], strict=False)), starts


def test_bad_limits_are_refused_at_registration():
    bad = qlite.App()
    with pytest.raises(qlite.TaskError, match="rate: expected JOBS/PERIOD such as '10/s'"):
        bad.task(name="x.a", rate="10 per second")(lambda: None)
    with pytest.raises(qlite.TaskError, match="concurrency: expected a whole number >= 1"):
        bad.task(name="x.b", concurrency=0)(lambda: None)
    with pytest.raises(qlite.TaskError, match="rate_key= needs rate="):
        bad.task(name="x.c", rate_key="smtp")(lambda: None)


# -- periodic jobs ----------------------------------------------------------------------------

papp = qlite.App()
ticks: list = []


@papp.periodic(every=60, name="p.latest")
def p_latest(ctx):
    ticks.append(("latest", ctx.meta["tick"]))


@papp.periodic(every=60, name="p.all", misfire="all")
def p_all(ctx):
    ticks.append(("all", ctx.meta["tick"]))


def test_each_tick_runs_once_across_workers_and_restarts_and_misfires_follow_policy(s3):
    ticks.clear()
    now = [math.ceil(time.time() / 60) * 60 + 1]  # ahead of real time: jobs are runnable

    def run_worker():
        Worker(papp, s3.settings(), clock=lambda: now[0]).run(burst=True)

    run_worker()  # first sight: the schedules start from now, nothing fires
    assert ticks == []
    for _ in range(3):  # three ticks, each seen by two workers in turn (a restart each)
        now[0] += 60
        run_worker()
        run_worker()
    now[0] += 5 * 60  # five ticks pass while no worker runs
    run_worker()
    run_worker()
    latest = [t for name, t in ticks if name == "latest"]
    caught_up = [t for name, t in ticks if name == "all"]
    assert len(latest) == 4 and len(set(latest)) == 4  # 3 on time + the latest missed one
    assert len(caught_up) == 8 and len(set(caught_up)) == 8  # 3 + every missed one
    assert max(latest) == max(caught_up)  # jobs may finish out of order on 4 threads
    r = run_qlite("schedules", "--app", "test_flow:papp", env={
        **s3.env, "PYTHONPATH": os.pathsep.join([s3.env["PYTHONPATH"],
                                                  os.path.dirname(__file__)])})
    assert r.returncode == 0, r.stderr
    assert "p.latest" in r.stdout and "every 60s" in r.stdout and "misfire=all" in r.stdout
    assert f"last={max(latest)}" in r.stdout


def test_two_worker_processes_run_each_tick_once(s3, tmp_path):
    ledger = tmp_path / "ledger"
    env = {**s3.env, "QLITE_TEST_LEDGER": str(ledger)}
    procs = [start_worker("--app", "periodicapp:app", "--concurrency", "2", env=env,
                          log=tmp_path / f"w{i}.log") for i in range(2)]
    try:
        eventually(lambda: ledger.exists() and len(ledger.read_text().splitlines()) >= 6,
                   what="six ticks in the ledger")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    lines = ledger.read_text().splitlines()
    fired = [line.split()[0] for line in lines]
    assert len(fired) >= 6, [(tmp_path / f"w{i}.log").read_text()[-2000:] for i in range(2)]
    assert len(set(fired)) == len(fired), lines  # no tick ran twice
