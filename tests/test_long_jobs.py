"""Long jobs: ctx.progress read from the bucket, ctx.checkpoint / ctx.resume across a kill -9,
a retry and a child process, and a lease kept by heartbeat while a job outlives it."""

import json
import signal
import time

import pytest

import qlite
from conftest import bucket_keys, start_worker
from conftest import qlite as run_qlite
from qlite.index.db import Index
from qlite.ops.dashboard import Dashboard


def until(condition, what, timeout=30.0):
    """Wait until ``condition()`` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def write_csv(path, rows):
    with open(path, "w") as f:
        f.write("id,name\n")
        f.writelines(f"{i},name-{i}\n" for i in range(rows))


def status_json(job_id, env):
    result = run_qlite("status", job_id, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_progress_is_coalesced_and_readable_from_the_bucket_while_running_and_after(
        s3, tmp_path):
    if s3.name == "moto":
        pytest.skip("one server suffices for a worker subprocess test")
    marks = tmp_path / "marks"
    marks.mkdir()
    job = qlite.Client().put("test.progress", kwargs={"steps": 10, "marker_dir": str(marks)})
    env = {**s3.env, "QLITE_PROGRESS_EVERY": "3600"}  # only the first report goes out at once
    worker = start_worker("--app", "testapp:app", env=env, log=tmp_path / "w.log")
    try:
        until(lambda: (marks / f"{job.id}.half").exists(), "the first half reported")
        running = status_json(job.id, s3.env)
        assert running["state"] == "pending"
        assert running["progress"]["done"] == 1  # reports 2..5 coalesced
        assert (running["progress"]["total"], running["progress"]["message"]) == \
            (10, "first half")
        assert running["progress"]["at"]
        # The index has every report (qlite ls on the worker VM), within a second.
        listed = until(lambda: [r for r in json.loads(run_qlite(
            "ls", "--state", "running", "--json", env=s3.env).stdout)
            if r["progress"] and r["progress"]["done"] == 5], "ls shows the latest report")
        assert listed[0]["id"] == job.id
        text = run_qlite("ls", "--state", "running", env=s3.env).stdout
        assert "running=" in text and "progress=5/10 (50%)" in text
        top = run_qlite("top", "--once", env=s3.env)
        assert top.returncode == 0, top.stderr
        assert "running" in top.stdout and "5/10 (50%)" in top.stdout
        [row] = Dashboard(s3.db).jobs({"state": ["running"]})
        assert row["progress"]["done"] == 5 and row["progress_text"].startswith("5/10 (50%)")
        (marks / f"{job.id}.go").write_text("")
        status = job.wait(timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert status["state"] == "succeeded"
    assert {k: status["progress"][k] for k in ("done", "total", "message")} == \
        {"done": 10, "total": 10, "message": "done"}
    assert status_json(job.id, s3.env)["progress"]["done"] == 10
    assert "progress: 10/10 (100%)" in run_qlite("status", job.id, env=s3.env).stdout
    assert "10/10 (100%)" in run_qlite("show", job.id, env=s3.env).stdout
    # The first report and the one the coalescing held back: two PUTs for ten reports.
    assert f"results/{job.id}.progress.json" in bucket_keys(s3, "results/")


def test_a_csv_import_killed_with_sigkill_resumes_from_its_last_checkpoint(s3, tmp_path):
    if s3.name == "moto":
        pytest.skip("one server suffices for a worker subprocess test")
    marks = tmp_path / "marks"
    marks.mkdir()
    csv, out = tmp_path / "rows.csv", tmp_path / "imported.txt"
    write_csv(csv, 100_000)
    job = qlite.Client().put("test.import_csv", kwargs={
        "csv_path": str(csv), "out_path": str(out), "marker_dir": str(marks),
        "pause_at": 50_000})
    worker = start_worker("--app", "testapp:app", env=s3.env, log=tmp_path / "w1.log")
    until(lambda: (marks / f"{job.id}.paused").exists(), "the import paused at row 50,000")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert f"checkpoints/{job.id}.json" in bucket_keys(s3, "checkpoints/")

    restarted = run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env, timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    status = job.wait(timeout=10)
    assert status["state"] == "succeeded", status
    assert status["result"] == {"resumed_from": 50_000, "rows": 50_000, "total": 100_000}
    lines = out.read_text().split()
    assert len(lines) == 100_000 and len(set(lines)) == 100_000  # every row once
    assert status["progress"]["done"] == 100_000
    # A succeeded job's checkpoint goes with its inbox object.
    assert bucket_keys(s3, "checkpoints/") == []


def test_a_retry_in_a_child_process_resumes_and_purge_removes_progress_and_checkpoint(
        s3, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    csv, out = tmp_path / "rows.csv", tmp_path / "imported.txt"
    write_csv(csv, 3_000)
    job = qlite.Client().put("test.import_csv", kwargs={
        "csv_path": str(csv), "out_path": str(out), "marker_dir": str(marks),
        "every": 1000, "pause_at": -2000}, max_attempts=2)
    failed = qlite.Client().put("test.import_csv", kwargs={
        "csv_path": str(csv), "out_path": str(tmp_path / "other.txt"),
        "marker_dir": str(marks), "every": 1000, "pause_at": -1000}, max_attempts=1)
    def drained():  # burst workers whose jobs run in child processes, until both end
        ran = run_qlite("worker", "--app", "testapp:app", "--burst", "--pool", "process",
                        env=s3.env, timeout=120)
        assert ran.returncode == 0, ran.stderr
        statuses = [job.status(), failed.status()]
        return statuses if all(s["state"] in ("succeeded", "failed") for s in statuses) else None

    [status, lost] = until(drained, "both jobs ended", timeout=120)
    assert status["state"] == "succeeded", status
    assert status["result"] == {"resumed_from": 2000, "rows": 1000, "total": 3000}
    assert status["errors"][0]["message"] == "failing on purpose at row 2000"
    # A failed job keeps its checkpoint: qlite retry resumes it.
    assert lost["state"] == "failed"
    assert bucket_keys(s3, "checkpoints/") == [f"checkpoints/{failed.id}.json"]
    purged = run_qlite("purge", "--older-than", "0s", env=s3.env)
    assert purged.returncode == 0, purged.stderr
    assert bucket_keys(s3, "checkpoints/") == []
    assert [k for k in bucket_keys(s3, "results/") if k.endswith(".progress.json")] == []


def test_a_job_longer_than_its_lease_keeps_it_by_heartbeat_and_runs_once(s3, tmp_path):
    if s3.name == "moto":
        pytest.skip("one server suffices for a worker subprocess test")
    marks = tmp_path / "marks"
    marks.mkdir()
    job = qlite.Client().put("test.progress", kwargs={"steps": 4, "marker_dir": str(marks)})
    worker = start_worker("--app", "testapp:app", "--lease", "0.6", env=s3.env,
                          log=tmp_path / "w.log")
    try:
        until(lambda: (marks / f"{job.id}.half").exists(), "the job started")
        index = Index(s3.db, readonly=True)
        first = index.get(job.id).lease_until
        # Renewed past several of its first leases without the handler doing anything.
        until(lambda: index.get(job.id).lease_until > first + 3 * 0.6,
              "the lease renewed by heartbeat")
        assert index.get(job.id).state == "running"
        index.close()
        (marks / f"{job.id}.go").write_text("")
        status = job.wait(timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert (status["state"], status["attempts"], status["errors"]) == ("succeeded", 1, [])


def test_a_job_taken_over_by_another_worker_of_the_fleet_resumes_from_its_checkpoint(
        seaweed_target, tmp_path):
    from test_fleet import LEASE, Fleet

    fleet = Fleet(seaweed_target, tmp_path)
    try:
        for vm in ("a", "b"):
            fleet.start(vm)
        until(lambda: fleet.balanced(2), "two workers share the shards", timeout=90)
        marks = tmp_path / "marks"
        marks.mkdir()
        csv, out = tmp_path / "rows.csv", tmp_path / "imported.txt"
        write_csv(csv, 20_000)
        job = qlite.Client().put("test.import_csv", kwargs={
            "csv_path": str(csv), "out_path": str(out), "marker_dir": str(marks),
            "pause_at": 10_000})
        paused = until(lambda: (marks / f"{job.id}.paused").exists()
                       and (marks / f"{job.id}.paused").read_text(), "the import paused")
        [victim] = [vm for vm, p in fleet.procs.items() if str(p.pid) == paused]
        fleet.procs[victim].send_signal(signal.SIGKILL)
        fleet.procs[victim].wait(10)
        # The other worker takes the shard over (its index never saw the job: attempt 1 there)
        # and the handler finds the checkpoint in the bucket.
        status = until(lambda: job.status()["state"] == "succeeded" and job.status(),
                       "the survivor finished the import", timeout=4 * LEASE + 60)
    finally:
        for proc in fleet.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert status["result"] == {"resumed_from": 10_000, "rows": 10_000, "total": 20_000}
    assert len(set(out.read_text().split())) == 20_000
