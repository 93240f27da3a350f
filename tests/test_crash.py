"""Real worker processes killed with SIGKILL, or stopped with SIGTERM/SIGINT."""

import json
import signal

import pytest

import qlite
from conftest import eventually, start_worker
from conftest import qlite as run_qlite


def wait_for(path_glob, directory, timeout=60.0):
    return eventually(lambda: sorted(directory.glob(path_glob)), timeout,
                      what=f"{path_glob} in {directory}")


def test_a_job_whose_worker_was_killed_runs_again_after_restart_and_completes(s3, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = qlite.Client().put("test.sleep", kwargs={"seconds": 2, "marker_dir": str(marks)})
    worker = start_worker("--app", "testapp:app", env=s3.env, log=tmp_path / "w1.log")
    wait_for(f"{job.id}.1.started", marks)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert not (marks / f"{job.id}.1.done").exists()
    assert job.status()["state"] == "pending"  # not lost: still in the inbox

    restarted = run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env, timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    assert "requeued after its worker stopped" in restarted.stderr
    status = job.wait(timeout=10)
    assert (status["state"], status["attempts"], status["result"]["attempt"]) == \
        ("succeeded", 2, 2)
    assert status["errors"][0]["type"] == "WorkerLost"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_lets_running_jobs_finish_and_exits_0(s3, tmp_path, sig):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = qlite.Client().put("test.sleep", kwargs={"seconds": 1.5, "marker_dir": str(marks)})
    worker = start_worker("--app", "testapp:app", env=s3.env, log=tmp_path / "w.log")
    wait_for(f"{job.id}.1.started", marks)
    worker.send_signal(sig)
    assert worker.wait(30) == 0, (tmp_path / "w.log").read_text()
    status = job.status()
    assert (status["state"], status["attempts"]) == ("succeeded", 1)


def test_a_job_still_running_after_the_grace_period_runs_again_on_restart(s3, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    job = qlite.Client().put("test.sleep", kwargs={"seconds": 3, "marker_dir": str(marks)})
    worker = start_worker("--app", "testapp:app", "--grace", "0.5", env=s3.env,
                          log=tmp_path / "w.log")
    wait_for(f"{job.id}.1.started", marks)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    log = (tmp_path / "w.log").read_text()
    assert "still running; they run again on restart" in log
    restarted = run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env, timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    status = json.loads(run_qlite("status", job.id, "--json", env=s3.env).stdout)
    assert (status["state"], status["attempts"]) == ("succeeded", 2)


def test_a_job_that_kills_its_worker_ends_failed_instead_of_a_crash_loop(s3):
    poison = qlite.Client().put("test.poison")
    runs = []
    for _ in range(5):
        result = run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env)
        runs.append(result.returncode)
        if result.returncode == 0 and poison.status()["state"] != "pending":
            break
    # It kills the worker once (in a thread), then runs alone in a child process, whose
    # deaths are pinned on it: its attempts are spent, it fails, no worker dies again. (A
    # burst worker may exit while its retry waits out the back-off: one more run then.)
    assert runs[0] == 1 and set(runs[1:]) == {0}, runs
    status = poison.status()
    assert (status["state"], status["attempts"]) == ("failed", 3)
    assert status["error"]["type"] == "ProcessCrashed"
    assert "exit code 1" in status["error"]["message"]
    assert [e["type"] for e in status["errors"]] == ["WorkerLost", "ProcessCrashed",
                                                      "ProcessCrashed"]


def test_a_crash_is_pinned_on_the_poison_pill_not_on_the_jobs_beside_it(s3, tmp_path):
    """A poison pill among ordinary jobs, concurrency 2, a restart loop (systemd
    Restart=always) with kills from outside: every ordinary job succeeds, though each has
    only 2 attempts and some were running at 2 or more worker deaths; the pill fails on
    crashes of its own."""
    marks = tmp_path / "marks"
    marks.mkdir()
    client = qlite.Client()
    sleep = {"seconds": 0.3, "marker_dir": str(marks)}
    innocents = [client.put("test.sleep", kwargs=sleep, max_attempts=2) for _ in range(3)]
    poison = client.put("test.poison")
    innocents += [client.put("test.sleep", kwargs=sleep, max_attempts=2) for _ in range(5)]
    args = ("--app", "testapp:app", "--concurrency", "2")

    # The pill kills its worker beside an ordinary job.
    worker = start_worker(*args, env=s3.env, log=tmp_path / "w0.log")
    assert worker.wait(60) == 1
    # Three kills from outside, each while a job runs (the first, while a suspect runs alone).
    for kill in range(1, 4):
        seen = set(marks.glob("*.started"))
        worker = start_worker(*args, env=s3.env, log=tmp_path / f"w{kill}.log")
        eventually(lambda seen=seen, worker=worker: set(marks.glob("*.started")) - seen
                   or worker.poll() is not None, what=f"a job started by worker {kill}",
                   every=0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    # The restart loop goes on until the work is done.
    for _ in range(6):
        result = run_qlite("worker", *args, "--burst", env=s3.env, timeout=120)
        assert result.returncode == 0, result.stderr
        if all(j.status()["state"] != "pending" for j in [*innocents, poison]):
            break
    statuses = [j.status() for j in innocents]
    assert [s["state"] for s in statuses] == ["succeeded"] * len(innocents), statuses
    # Some ordinary job was running at two worker deaths or more, with max_attempts=2.
    assert max(sum(e["type"] == "WorkerLost" for e in s["errors"]) for s in statuses) >= 2
    status = poison.status()
    assert status["state"] == "failed", status
    assert status["error"]["type"] == "ProcessCrashed"
    assert sum(e["type"] == "ProcessCrashed" for e in status["errors"]) <= 3
    shown = run_qlite("show", poison.id, env=s3.env)
    assert "crashes:" in shown.stdout and "worker lost:" in shown.stdout, shown.stderr


def test_a_job_running_through_six_kills_of_its_worker_is_not_failed(s3, tmp_path):
    """A crash loop from outside (a deploy loop, an OOM kill of the worker) burns no attempt
    of the job that happens to run: it succeeds once the loop stops."""
    marks = tmp_path / "marks"
    marks.mkdir()
    job = qlite.Client().put("test.sleep", kwargs={"seconds": 1.5, "marker_dir": str(marks)},
                             max_attempts=2)
    for attempt in range(1, 7):
        worker = start_worker("--app", "testapp:app", env=s3.env,
                              log=tmp_path / f"w{attempt}.log")
        wait_for(f"{job.id}.{attempt}.started", marks, timeout=60)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    result = run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env, timeout=60)
    assert result.returncode == 0, result.stderr
    status = job.wait(timeout=10)
    assert (status["state"], status["attempts"]) == ("succeeded", 7)
    assert [e["type"] for e in status["errors"]] == ["WorkerLost"] * 6


def test_two_worker_processes_share_the_index_without_running_a_job_twice(s3, tmp_path):
    ledger = tmp_path / "ledger.txt"
    jobs = qlite.Client().put_many(
        [{"task": "test.ledger", "kwargs": {"path": str(ledger)}} for _ in range(150)])
    workers = [start_worker("--app", "testapp:app", "--burst", "--concurrency", "4",
                            env=s3.env, log=tmp_path / f"w{i}.log") for i in range(2)]
    assert [w.wait(120) for w in workers] == [0, 0]
    lines = [line.split() for line in ledger.read_text().splitlines()]
    ran = [job_id for job_id, _, _ in lines]
    assert sorted(ran) == sorted(j.id for j in jobs)  # each job once, none skipped
    assert all(attempt == "1" for _, attempt, _ in lines)
    assert all(j.status()["state"] == "succeeded" for j in jobs)


def test_quick_jobs_claimed_ahead_and_not_started_at_a_stop_are_given_back(s3, tmp_path):
    """Quick jobs are claimed ahead and run in turn (turns.py); a worker stopped with SIGTERM
    runs none of those left, and gives their attempts back: three stops in a drain, and still
    every job ran once, with attempt 1 (a job left claimed would be reaped: attempt 2)."""
    ledger = tmp_path / "ledger.txt"
    jobs = qlite.Client().put_many(
        [{"task": "test.ledger", "kwargs": {"path": str(ledger)}} for _ in range(3000)])

    def ran() -> int:
        return len(ledger.read_text().splitlines()) if ledger.exists() else 0

    for stop in range(3):
        before = ran()
        worker = start_worker("--app", "testapp:app", "--concurrency", "1", env=s3.env,
                              log=tmp_path / f"w{stop}.log")
        eventually(lambda b=before: ran() >= b + 300 or None, 120, what="300 more jobs run")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, (tmp_path / f"w{stop}.log").read_text()[-3000:]
    result = run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split() for line in ledger.read_text().splitlines()]
    assert sorted(job_id for job_id, _, _ in lines) == sorted(j.id for j in jobs)
    assert {attempt for _, attempt, _ in lines} == {"1"}
