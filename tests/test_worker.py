"""The worker against real S3 servers and a real SQLite file, in process."""

import json
import os
import time
from pathlib import Path

import pytest

import qlite
from conftest import bucket_keys, drain_with, eventually
from qlite import envelope
from qlite.index.db import Index
from qlite.worker.loop import Worker

app = qlite.App()
calls: list[tuple] = []


@app.task(name="math.add")
def add(a, b):
    calls.append(("add", a, b))
    return a + b


@app.task(name="t.flaky", backoff=0.02)
def flaky(ctx, fail_times):
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"failure on attempt {ctx.attempt}")
    return ctx.attempt


@app.task(name="t.always_fail", max_attempts=2, backoff=0.02)
def always_fail():
    raise ValueError("boom")


@app.task(name="t.not_json")
def not_json():
    return {1, 2}


@app.task(name="t.follow_up")
def follow_up(ctx, n):
    return ctx.put("math.add", [n, n]).id


@app.task(name="t.retry_after", backoff=60)
def retry_after(ctx):
    if ctx.attempt == 1:
        raise qlite.Retry("server said 429", after=0.05)  # not the 30-60 s back-off
    return ctx.attempt


snoozed: set = set()


@app.task(name="t.snooze", max_attempts=1)
def snooze(ctx):
    if ctx.job_id not in snoozed:
        snoozed.add(ctx.job_id)
        raise qlite.Snooze(after=0.05)
    return ctx.attempt


@app.task(name="t.fail_now", max_attempts=5)
def fail_now():
    raise qlite.Fail("the order no longer exists")


@app.task(name="t.give_up", max_attempts=5, give_up_on=KeyError)
def give_up():
    raise KeyError("missing")


@app.task(name="t.only_io", max_attempts=5, retry_on=OSError)
def only_io():
    raise ValueError("not an I/O error")


@app.task(name="t.stuck", timeout=0.5, max_attempts=1)
def stuck():
    while True:  # never yields: only a hard kill stops it
        pass


@app.task(name="t.crash", timeout=30, max_attempts=2, backoff=0.01)
def crash():
    os._exit(3)


@app.task(name="t.pid")
def pid():
    return os.getpid()


@app.task(name="t.env")
def env_var(name):
    return os.environ.get(name)


@app.task(name="t.surrogate", max_attempts=1)
def surrogate():
    raise ValueError("bad file name \udcff")  # as os.listdir gives for non-UTF-8 bytes


app.spec = f"{__name__}:app"  # child processes load this app by name


def drain(s3, jobs, timeout=30.0, **settings) -> list[dict]:
    return drain_with(app, s3, jobs, timeout, settings)


keys = bucket_keys


def test_a_job_runs_and_its_result_is_readable_from_the_bucket(s3):
    job = qlite.Client().put("math.add", kwargs={"a": 2, "b": 3})
    [status] = drain(s3, [job])
    assert (status["state"], status["result"], status["attempts"]) == ("succeeded", 5, 1)
    assert keys(s3, "inbox/") == []
    assert keys(s3, "results/") == [f"results/{job.id}.json"]
    assert job.result() == 5
    row = Index(s3.db).get(job.id)
    assert (row.state, row.published, row.result) == ("succeeded", True, 5)


def test_a_failing_handler_is_retried_then_succeeds(s3):
    job = qlite.Client().put("t.flaky", kwargs={"fail_times": 2})
    [status] = drain(s3, [job])
    assert (status["state"], status["result"], status["attempts"]) == ("succeeded", 3, 3)
    assert [e["message"] for e in status["errors"]] == ["failure on attempt 1",
                                                       "failure on attempt 2"]
    assert all("Traceback" in e["traceback"] for e in status["errors"])


def test_a_handler_that_keeps_failing_ends_failed_with_every_attempt_recorded(s3):
    job = qlite.Client().put("t.always_fail")
    [status] = drain(s3, [job])
    assert (status["state"], status["attempts"]) == ("failed", 2)
    assert status["error"]["type"] == "ValueError" and status["error"]["message"] == "boom"
    assert [e["attempt"] for e in status["errors"]] == [1, 2]
    with pytest.raises(qlite.JobFailed, match="ValueError: boom"):
        job.result()


def test_max_attempts_from_the_envelope_wins(s3):
    job = qlite.Client().put("t.flaky", kwargs={"fail_times": 5}, max_attempts=1)
    [status] = drain(s3, [job])
    assert (status["state"], status["attempts"]) == ("failed", 1)


def test_an_unknown_task_fails_naming_it_and_the_registered_ones(s3):
    job = qlite.Client().put("no.such_task", [1])
    [status] = drain(s3, [job])
    assert status["state"] == "failed"
    assert status["error"]["type"] == "UnknownTask"
    assert "unknown task 'no.such_task'" in status["error"]["message"]
    assert "math.add" in status["error"]["message"]


def test_a_result_that_is_not_json_fails_clearly(s3):
    job = qlite.Client().put("t.not_json")
    [status] = drain(s3, [job])
    assert (status["state"], status["attempts"]) == ("failed", 1)
    assert "returned a set, which is not JSON-serialisable" in status["error"]["message"]


def test_arguments_that_do_not_fit_fail_without_retry(s3):
    job = qlite.Client().put("math.add", [1, 2, 3])
    [status] = drain(s3, [job])
    assert (status["state"], status["attempts"]) == ("failed", 1)
    assert status["error"]["type"] == "BadArguments"


def test_a_handler_can_enqueue_a_follow_up_through_ctx(s3):
    job = qlite.Client().put("t.follow_up", [21])
    [status] = drain(s3, [job])
    child = qlite.Client().job(status["result"])
    assert drain(s3, [child])[0]["result"] == 42


def test_an_idempotency_key_put_again_after_completion_does_not_run_again(s3):
    calls.clear()
    client = qlite.Client()
    first = client.put("math.add", [20, 22], key="once")
    drain(s3, [first])
    again = client.put("math.add", [20, 22], key="once")
    assert again.id == first.id
    drain(s3, [again])
    assert calls == [("add", 20, 22)]
    assert keys(s3, "inbox/") == []


def test_a_delayed_job_waits_for_its_time(s3):
    put_at = time.time()
    job = qlite.Client().put("math.add", [1, 1], delay=60)
    Worker(app, s3.settings(), clock=lambda: put_at).run(burst=True)
    assert Index(s3.db).get(job.id).state == "scheduled"
    assert job.status()["state"] == "pending"
    later = lambda: time.time() + 61  # noqa: E731 - the worker comes once the delay passed
    assert drain_with(app, s3, [job], worker={"clock": later})[0]["result"] == 2


def put_raw(s3, key: str, body: bytes) -> None:
    s3.server.client().put_object(Bucket=s3.bucket, Key=s3.prefix + key, Body=body)


def test_malformed_inbox_objects_are_quarantined_with_a_reason_and_the_worker_goes_on(s3):
    good = qlite.Client().put("math.add", [1, 2])
    ids = {name: envelope.new_id() for name in ("not_json", "version", "fields", "big")}
    put_raw(s3, f"inbox/default/{ids['not_json']}.json", b"{not json")
    env = envelope.make("math.add", [1, 2])
    put_raw(s3, f"inbox/default/{ids['version']}.json",
            json.dumps({**env, "id": ids["version"], "v": 99}).encode())
    put_raw(s3, f"inbox/default/{ids['fields']}.json", json.dumps({"v": 1}).encode())
    put_raw(s3, f"inbox/default/{ids['big']}.json", b" " * 5000)
    put_raw(s3, "inbox/default/hello.json", b"{}")
    [status] = drain(s3, [good], max_payload=4096)
    assert status["result"] == 3
    assert keys(s3, "inbox/") == []
    assert sorted(keys(s3, "quarantine/")) == sorted(
        [f"quarantine/default/{i}.json" for i in ids.values()] + ["quarantine/default/hello.json"])
    client = s3.server.client()
    reasons = {
        name: client.head_object(Bucket=s3.bucket, Key=f"{s3.prefix}quarantine/default/{i}.json")
        ["Metadata"]["qlite-reason"] for name, i in ids.items()}
    assert "not JSON" in reasons["not_json"]
    assert "unknown envelope version v=99" in reasons["version"]
    assert "misses field" in reasons["fields"]
    assert "over the 4096-byte limit" in reasons["big"]
    # A producer waiting on a quarantined job learns it failed, and why.
    status = qlite.Client().status(ids["not_json"])
    assert (status["state"], status["error"]["type"]) == ("failed", "Quarantined")
    assert {r["key"] for r in Index(s3.db).quarantined()} >= {"inbox/default/hello.json"}


def test_retry_after_reschedules_with_the_handlers_delay(s3):
    job = qlite.Client().put("t.retry_after")
    now = [time.time() + 1]  # the worker's clock, moved by the test
    Worker(app, s3.settings(), clock=lambda: now[0]).run(burst=True)
    row = Index(s3.db).get(job.id)
    assert row.state == "scheduled"
    assert row.run_at == pytest.approx(now[0] + 0.05)  # not the task's 60 s back-off
    now[0] += 0.05
    [status] = drain_with(app, s3, [job], worker={"clock": lambda: now[0]})
    assert (status["state"], status["result"]) == ("succeeded", 2)
    assert status["errors"][0]["type"] == "Retry"


def test_snooze_does_not_spend_an_attempt(s3):
    job = qlite.Client().put("t.snooze")
    [status] = drain(s3, [job])
    assert (status["state"], status["attempts"], status["result"]) == ("succeeded", 1, 1)


@pytest.mark.parametrize("task, kind", [
    ("t.fail_now", "Fail"), ("t.give_up", "KeyError"), ("t.only_io", "ValueError")])
def test_errors_that_should_not_be_retried_fail_at_once(s3, task, kind):
    [status] = drain(s3, [qlite.Client().put(task)])
    assert (status["state"], status["attempts"], status["error"]["type"]) == ("failed", 1, kind)


def test_a_stuck_job_is_killed_at_its_timeout_and_the_worker_goes_on(s3):
    stuck_job = qlite.Client().put("t.stuck")
    other = qlite.Client().put("math.add", [1, 2])
    statuses = drain(s3, [stuck_job, other], timeout=60)
    assert (statuses[0]["state"], statuses[0]["error"]["type"]) == ("failed", "Timeout")
    assert "longer than its 0.5s timeout" in statuses[0]["error"]["message"]
    assert statuses[1]["result"] == 3


def test_a_job_that_kills_its_process_fails_after_its_attempts_and_the_worker_goes_on(s3):
    crash_job = qlite.Client().put("t.crash")
    other = qlite.Client().put("math.add", [2, 2])
    statuses = drain(s3, [crash_job, other], timeout=60)
    assert (statuses[0]["state"], statuses[0]["attempts"]) == ("failed", 2)
    assert statuses[0]["error"]["type"] == "ProcessCrashed"
    assert "exit code 3" in statuses[0]["error"]["message"]
    assert statuses[1]["result"] == 4


def test_the_process_pool_runs_jobs_outside_the_worker_process(s3):
    [status] = drain(s3, [qlite.Client().put("t.pid")], pool="process")
    assert status["result"] != os.getpid()
    [status] = drain(s3, [qlite.Client().put("t.pid")])
    assert status["result"] == os.getpid()


def test_a_child_process_sees_the_workers_environment_of_now(s3, monkeypatch):
    """The forkserver is started once, by the first job that needs a child; a child must
    still see the environment the worker has when the job runs, not the one of that first
    time (the suite changes it between tests; a built-in task reads its settings there)."""
    monkeypatch.setenv("QLITE_TEST_MARK", "first")
    [first] = drain(s3, [qlite.Client().put("t.env", ["QLITE_TEST_MARK"])], pool="process")
    monkeypatch.setenv("QLITE_TEST_MARK", "second")
    [second] = drain(s3, [qlite.Client().put("t.env", ["QLITE_TEST_MARK"])], pool="process")
    assert (first["result"], second["result"]) == ("first", "second")


def test_an_error_message_sqlite_cannot_store_still_fails_the_job_cleanly(s3):
    bad = qlite.Client().put("t.surrogate")
    good = qlite.Client().put("math.add", [5, 5])
    statuses = drain(s3, [bad, good])
    assert statuses[0]["state"] == "failed"
    assert statuses[0]["error"]["message"] == "bad file name \\udcff"
    assert statuses[1]["result"] == 10


def test_a_second_object_at_a_quarantined_key_is_quarantined_too(s3):
    put_raw(s3, "inbox/default/same.json", b"first")
    Worker(app, s3.settings()).run(burst=True)
    put_raw(s3, "inbox/default/same.json", b"second")
    Worker(app, s3.settings()).run(burst=True)
    copies = sorted(k for k in keys(s3, "quarantine/"))
    assert len(copies) == 2 and copies[0] == "quarantine/default/same.json"
    bodies = {s3.server.client().get_object(Bucket=s3.bucket, Key=s3.prefix + k)["Body"].read()
              for k in copies}
    assert bodies == {b"first", b"second"}


@app.task(name="t.echo_size")
def echo_size(blob, repeat=1):
    return blob * repeat


def test_large_arguments_and_results_travel_by_claim_check_transparently(s3):
    blob = "é" * 400_000  # 800 KB of UTF-8: over the 256 KiB inline limit
    job = qlite.Client().put("t.echo_size", [blob], {"repeat": 2})
    inbox = keys(s3, "inbox/")
    assert keys(s3, "payloads/") == [f"payloads/{job.id}.json"] and len(inbox) == 1
    [status] = drain(s3, [job])
    assert status["state"] == "succeeded" and status["result"] == blob * 2
    assert job.result() == blob * 2
    record = s3.server.client().get_object(Bucket=s3.bucket,
                                           Key=f"{s3.prefix}results/{job.id}.json")
    assert record["ContentLength"] < 4096  # the status record stays small to poll
    assert sorted(keys(s3, "results/")) == [f"results/{job.id}.json",
                                            f"results/{job.id}.value.json"]


def test_a_missing_claim_checked_payload_fails_the_job_clearly(s3):
    job = qlite.Client().put("t.echo_size", ["x" * 300_000])
    s3.server.client().delete_object(Bucket=s3.bucket, Key=f"{s3.prefix}payloads/{job.id}.json")
    [status] = drain(s3, [job])
    assert (status["state"], status["error"]["type"]) == ("failed", "PayloadMissing")


def finished(group, app, s3):
    """A burst worker's run, then the group's final result, or None while there is none."""
    Worker(app, s3.settings()).run(burst=True)
    try:
        return {"value": group.result(0)}  # a dict: a falsy result is a result too
    except qlite.JobNotFound:
        return None


def test_the_csv_import_example_fans_out_chunks_and_fans_in_their_results(s3, tmp_path,
                                                                          monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "examples"))
    import csv_import

    path = tmp_path / "orders.csv"
    path.write_text("id,amount\n" + "".join(f"{i},{i / 10}\n" for i in range(1, 1201)))
    group = csv_import.start(str(path), chunk=250, key="orders-2026-11")
    assert len(group.jobs) == 5
    assert csv_import.start(str(path), chunk=250, key="orders-2026-11").id == group.id
    result = eventually(lambda: finished(group, csv_import.app, s3), what="the group's result"
                        )["value"]
    assert result == {"chunks": 5, "rows": 1200, "amount": 72060.0}


@app.task(name="t.maybe_fail", max_attempts=1)
def maybe_fail(n):
    if n == 2:
        raise ValueError("chunk 2 is bad")
    return n


@app.task(name="t.collect")
def collect(values):
    return values


def test_a_group_with_a_failed_member_runs_on_failure_with_every_status(s3):
    group = qlite.group([("t.maybe_fail", [n]) for n in range(4)], then="t.collect",
                        on_failure=collect)
    statuses = eventually(lambda: finished(group, app, s3), what="the on_failure result"
                          )["value"]
    assert [s["state"] for s in statuses] == ["succeeded", "succeeded", "failed", "succeeded"]
    assert statuses[2]["error"]["message"] == "chunk 2 is bad"
