"""qlite.django: the django.tasks backend and ``manage.py qlite_worker``, against SeaweedFS
with real worker processes (the project is tests/django_project)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import eventually
from conftest import qlite as run_qlite

pytest.importorskip("django")
PROJECT = Path(__file__).resolve().parent / "django_project"


@pytest.fixture(scope="module", autouse=True)
def django_project():
    sys.path.insert(0, str(PROJECT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    import django

    django.setup()
    yield
    sys.path.remove(str(PROJECT))


@pytest.fixture
def queue(seaweed_target):
    """TASKS pointing at a fresh queue on SeaweedFS, for this test's process."""
    from django.conf import settings
    from django.test import override_settings

    tasks = {"default": {**settings.TASKS["default"], "OPTIONS": {
        "url": seaweed_target.url, "max_attempts": 2}}}
    with override_settings(TASKS=tasks):
        yield seaweed_target


def manage(target, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=_env(target),
                          capture_output=True, text=True, timeout=timeout)


def _env(target) -> dict:
    return {**target.env, "PYTHONPATH": "", "QLITE_POLL_MIN": "0.05", "QLITE_POLL_MAX": "0.2"}


def drain(target, results, timeout: float = 60) -> None:
    """Burst workers until every result is finished (a retry waits out its back-off)."""
    deadline = time.monotonic() + timeout
    while True:
        out = manage(target, "qlite_worker", "--burst")
        assert out.returncode == 0, out.stdout + out.stderr
        for r in results:
            r.refresh()
        if all(r.is_finished for r in results):
            return
        assert time.monotonic() < deadline, [r.status for r in results]


def test_a_task_enqueued_here_runs_in_manage_py_qlite_worker_and_its_result_reads_back(queue):
    from shop import tasks

    from qlite.django.compat import TaskResultStatus

    result = tasks.add.enqueue(2, b=3)
    assert result.status == TaskResultStatus.READY
    assert tasks.add.get_result(result.id).status == TaskResultStatus.READY
    mail = tasks.send_mail.enqueue("a@example.com")
    doubled = tasks.async_double.enqueue(21)
    drain(queue, [result, mail, doubled])
    fresh = tasks.add.get_result(result.id)
    assert fresh.status == TaskResultStatus.SUCCESSFUL
    assert fresh.return_value == 5
    assert (fresh.args, fresh.kwargs) == ([2], {"b": 3})
    assert fresh.enqueued_at <= fresh.started_at <= fresh.finished_at
    assert fresh.last_attempted_at is not None and fresh.attempts == 1
    assert mail.return_value == {"to": "a@example.com", "subject": "hi"}
    assert doubled.return_value == 42


def test_a_failing_task_is_retried_then_failed_with_each_error(queue):
    from shop import tasks

    from qlite.django.compat import TaskResultStatus

    result = tasks.boom.enqueue("no luck")
    drain(queue, [result])
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 2  # OPTIONS max_attempts
    assert result.errors[0].exception_class is ValueError
    assert "no luck" in result.errors[-1].traceback
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018


def test_a_context_task_sees_its_attempt_number(queue):
    from shop import tasks

    result = tasks.flaky.enqueue("m")
    drain(queue, [result])
    assert result.return_value == {"attempt": 2, "id": result.id}
    assert result.attempts == 2 and len(result.errors) == 1
    # Each attempt's worker, as the record knows it: two burst processes here.
    assert len(result.worker_ids) == 2
    assert all(w.count(":") >= 2 and w != "unknown" for w in result.worker_ids)


def test_enqueue_refuses_unknown_queues_unserialisable_arguments_and_a_missing_bucket(queue):
    from django.conf import settings
    from django.test import override_settings
    from shop import tasks

    import qlite
    from qlite.django.compat import InvalidTask

    with pytest.raises(InvalidTask, match="nightly"):
        tasks.add.using(queue_name="nightly").enqueue(1, 2)
    with pytest.raises(TypeError):
        tasks.add.enqueue(object(), 2)
    missing = {"default": {**settings.TASKS["default"],
                           "OPTIONS": {"url": "s3://no-such-bucket-qlite/x"}}}
    with override_settings(TASKS=missing), pytest.raises(qlite.BucketNotFound):
        tasks.add.enqueue(1, 2)


def test_a_job_naming_a_module_path_that_is_no_project_task_fails_without_importing_it(queue):
    import qlite

    client = qlite.Client(queue.url)
    job = client.put("os.system", ["touch /tmp/qlite-django-pwned"])
    # A callable of an installed app's module that is not a Task is refused too.
    helper = client.put("shop.tasks.Path", ["/tmp/qlite-django-pwned"])
    out = manage(queue, "qlite_worker", "--burst")
    assert out.returncode == 0, out.stderr
    for refused in (job, helper):
        status = refused.status()
        assert status["state"] == "failed"
        assert status["error"]["type"] == "UnknownTask"
        assert "shop.tasks.add" in status["error"]["message"]
    assert not Path("/tmp/qlite-django-pwned").exists()


def test_run_after_and_priority_reach_the_envelope_and_a_deferred_task_waits(queue):
    from datetime import timedelta

    from django.utils import timezone
    from shop import tasks

    import qlite
    from qlite.django.compat import TaskResultStatus

    later = timezone.now() + timedelta(hours=1)
    deferred = tasks.add.using(run_after=later, priority=7).enqueue(1, 2)
    client = qlite.Client(queue.url)
    env = json.loads(client.store.get(f"inbox/default/{deferred.id}.json"))
    assert env["priority"] == 7 and env["record_start"] is True
    assert abs(datetime.fromisoformat(env["not_before"]) - later) < timedelta(seconds=1)
    out = manage(queue, "qlite_worker", "--burst")
    assert out.returncode == 0, out.stderr
    deferred.refresh()
    assert deferred.status == TaskResultStatus.READY and deferred.started_at is None


def test_a_task_cancelled_through_qlite_reads_back_failed(queue):
    from shop import tasks

    import qlite
    from qlite.django.compat import TaskResultStatus

    result = tasks.add.enqueue(1, 2)
    qlite.Client(queue.url).cancel(result.id)
    out = manage(queue, "qlite_worker", "--burst")
    assert out.returncode == 0, out.stderr
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class for e in result.errors] == [qlite.JobFailed]
    assert result.errors[0].traceback.startswith("Cancelled: ")


def test_a_worker_killed_mid_task_leaves_the_job_to_the_next_worker(queue, tmp_path):
    from shop import tasks

    from qlite.django.compat import TaskResultStatus

    marker = tmp_path / "started"
    result = tasks.slow.enqueue(str(marker), 30)
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "manage.py", "qlite_worker"], cwd=PROJECT,
                            env=_env(queue), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "worker.log").read_text())
            time.sleep(0.05)
        # The running record is written beside the handler's start (one PUT on the I/O pool).
        eventually(lambda: tasks.slow.get_result(result.id).status == TaskResultStatus.RUNNING,
                   what="the running record")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    # The bucket cannot tell that the worker died: the attempt's record says RUNNING until
    # the next attempt starts.
    assert tasks.slow.get_result(result.id).status == TaskResultStatus.RUNNING
    # The next worker on the same index finds the dead worker's job and runs it again.
    drain(queue, [result])
    assert result.return_value == "done again"
    assert result.attempts == 2
    assert is_owner_id(result.worker_ids[0], proc.pid)
    assert result.worker_ids[1] != result.worker_ids[0]


READER = """
import json, os, sys
sys.path.insert(0, {project!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
import django
django.setup()
from shop import tasks
r = tasks.wait_for.get_result({job_id!r})
print(json.dumps({{"status": r.status.name, "started_at": str(r.started_at or ""),
                  "last_attempted_at": str(r.last_attempted_at or ""),
                  "finished_at": str(r.finished_at or ""), "worker_ids": r.worker_ids,
                  "args": r.args}}))
"""


def read_elsewhere(target, job_id: str) -> dict:
    """get_result in another process (a web process of the same project)."""
    out = subprocess.run([sys.executable, "-c", READER.format(project=str(PROJECT),
                                                              job_id=job_id)],
                         env=_env(target), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def is_owner_id(worker: str, pid: int) -> bool:
    """``host:pid:start`` of the worker process ``pid`` on this host (liveness.owner_id)."""
    import socket

    host, pid_text, start = worker.rsplit(":", 2)
    return host == socket.gethostname() and pid_text == str(pid) and start.isdigit()


def test_get_result_from_another_process_sees_the_task_running_then_successful(
        queue, tmp_path):
    from shop import tasks

    import qlite
    from qlite.django.compat import TaskResultStatus

    go = tmp_path / "go"
    result = tasks.wait_for.enqueue(str(go))
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "manage.py", "qlite_worker"], cwd=PROJECT,
                            env=_env(queue), stdout=log, stderr=subprocess.STDOUT)
    try:
        seen = eventually(lambda: (r := read_elsewhere(queue, result.id))["status"] == "RUNNING"
                          and r, what="get_result says RUNNING")
        assert seen["started_at"] and seen["last_attempted_at"] and not seen["finished_at"]
        assert seen["args"] == [str(go)]
        assert len(seen["worker_ids"]) == 1 and is_owner_id(seen["worker_ids"][0], proc.pid)
        # qlite's own status reads the same record, and a running job may still be cancelled
        # (the task would see it; this one does not look, and its success wins).
        client = qlite.Client(queue.url)
        assert client.status(result.id)["state"] == "running"
        assert client.cancel(result.id)["state"] == "running"
        out = run_qlite("status", result.id, env=queue.env)
        assert out.returncode == 0 and f"{result.id}  running" in out.stdout, out.stderr
        go.touch()
        done = eventually(lambda: (r := read_elsewhere(queue, result.id))["status"] ==
                          "SUCCESSFUL" and r, what="get_result says SUCCESSFUL")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    assert done["worker_ids"] == seen["worker_ids"] and done["finished_at"]
    # task_started and task_finished were sent in the worker: Django's own log lines.
    logged = (tmp_path / "worker.log").read_text()
    for state in ("RUNNING", "SUCCESSFUL"):
        assert re.search(rf"Task id={result.id} path=shop.tasks.wait_for state=\S*{state}",
                         logged), logged[-3000:]
    fresh = tasks.wait_for.get_result(result.id)
    assert fresh.status == TaskResultStatus.SUCCESSFUL
    # The task was given the same worker ids as get_result reads back.
    assert fresh.return_value == {"worker_ids": seen["worker_ids"]}


def test_a_task_waiting_for_its_retry_reads_back_ready_with_its_error(queue):
    from shop import tasks

    import qlite
    from qlite.django.compat import TaskResultStatus

    result = tasks.later.enqueue("the API said later")
    out = manage(queue, "qlite_worker", "--burst")  # one attempt; the next is an hour away
    assert out.returncode == 0, out.stderr
    result.refresh()
    assert result.status == TaskResultStatus.READY
    assert [e.exception_class_path for e in result.errors] == ["qlite.errors.Retry"]
    assert "the API said later" in result.errors[0].traceback
    assert result.attempts == 1 and result.worker_ids[0].count(":") >= 2
    assert result.started_at is not None and result.finished_at is None
    status = qlite.Client(queue.url).status(result.id)
    assert status["state"] == "scheduled" and status["not_before"] > status["started_at"]


PRODUCER = """
import json, os, sys
sys.path.insert(0, {project!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
import django
django.setup()
from shop import tasks
result = tasks.add.enqueue(1, 2)
tasks.add.get_result(result.id)
print(json.dumps(sorted(sys.modules)))
"""
# What Django itself and the backport bring with them.
DJANGO_AND_ITS_DEPENDENCIES = {"django", "asgiref", "sqlparse", "django_tasks",
                               "typing_extensions", "django_stubs_ext", "zoneinfo"}


def test_enqueue_and_get_result_load_only_django_boto3_and_the_standard_library(queue):
    from test_imports import BOTO3_AND_ITS_DEPENDENCIES

    out = subprocess.run([sys.executable, "-c", PRODUCER.format(project=str(PROJECT))],
                         env=_env(queue), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    third = {m.split(".")[0] for m in modules if not m.startswith(("__", "_sysconfigdata"))} - set(
        sys.stdlib_module_names) - {"project", "shop"}
    allowed = BOTO3_AND_ITS_DEPENDENCIES | DJANGO_AND_ITS_DEPENDENCIES
    assert third <= allowed, third - allowed
    assert not [m for m in modules if m.startswith(("qlite.worker", "qlite.index", "qlite.cli"))]


def test_child_processes_load_the_project_tasks_for_timeouts_and_the_process_pool(queue):
    from shop import tasks

    import qlite

    # A timeout runs the job in a child process, which loads qlite.django.worker:app.
    timed = qlite.Client(queue.url).put(tasks.add.module_path, [1, 2], timeout=30)
    out = manage(queue, "qlite_worker", "--burst")
    assert out.returncode == 0, out.stderr
    pooled = tasks.send_mail.enqueue("b@example.com")  # for the process pool alone
    out = manage(queue, "qlite_worker", "--burst", "--pool", "process")
    assert out.returncode == 0, out.stderr
    assert tasks.add.get_result(timed.id).return_value == 3
    assert tasks.send_mail.get_result(pooled.id).return_value == {
        "to": "b@example.com", "subject": "hi"}


def test_a_running_record_never_replaces_a_final_one_and_a_final_one_replaces_it(
        seaweed_target):
    """The records of a job with record_start (Django's): the running record of a late write
    (a slow PUT racing with the job's end) loses to the final record, in either order."""
    from qlite.envelope import new_id, result_key
    from qlite.store import Store
    from qlite.worker.publish import Publisher

    store = Store(seaweed_target.settings().require_url(), seaweed_target.env.get(
        "AWS_ENDPOINT_URL_S3"))
    publisher = Publisher(store, None, None, None, time.time, 1 << 20)  # type: ignore[arg-type]

    def record(state: str, attempts: int, at: str = "2026-01-01T00:00:00.000000Z") -> dict:
        return {"v": 1, "id": job_id, "state": state, "task": "shop.tasks.add",
                "queue": "default", "attempts": attempts, "result": None, "error": None,
                "errors": [], "updated_at": at}

    def state() -> tuple[str, int]:
        r = json.loads(store.get(result_key(job_id)))
        return r["state"], r["attempts"]

    job_id = new_id()
    publisher._put_interim(result_key(job_id), record("running", 1))
    assert state() == ("running", 1)
    publisher._put_interim(result_key(job_id), record(
        "scheduled", 1, "2026-01-01T00:00:01.000000Z"))  # retried: waits for attempt 2
    assert state() == ("scheduled", 1)
    publisher._put_interim(result_key(job_id), record("running", 1))  # late: an older write
    assert state() == ("scheduled", 1)
    publisher._put_record(result_key(job_id), record("succeeded", 2))
    assert state() == ("succeeded", 2)
    publisher._put_interim(result_key(job_id), record(
        "running", 2, "2026-01-01T00:00:09.000000Z"))  # later than the end, still loses
    assert state() == ("succeeded", 2)
