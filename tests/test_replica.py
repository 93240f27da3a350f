"""Litestream replication of the index: a worker on a fresh disk restores it from the bucket."""

import time

import pytest

import qlite
from conftest import qlite as run_qlite
from qlite.index.db import Index
from qlite.worker import replica


def test_a_fresh_disk_restores_the_index_from_the_replica_and_catches_up(s3, tmp_path):
    env = {**s3.env, "QLITE_REPLICATE": "on"}
    client = qlite.Client()
    first = client.put("math.add", [1, 2])
    worker = run_qlite("worker", "--app", "testapp:app", "--burst", env=env, timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert "replicating the index" in worker.stderr

    # The disk is lost. A job finished by another worker meanwhile (whose index changes never
    # reached the replica) exists only in results/.
    s3.db.unlink()
    for suffix in ("-wal", "-shm"):
        s3.db.with_name(s3.db.name + suffix).unlink(missing_ok=True)
    other_db = tmp_path / "other.db"
    second = client.put("math.add", [2, 2])
    other = run_qlite("worker", "--app", "testapp:app", "--burst",
                      env={**s3.env, "QLITE_DB": str(other_db)}, timeout=120)
    assert other.returncode == 0, other.stderr

    third = client.put("math.add", [3, 3])
    restored = run_qlite("worker", "--app", "testapp:app", "--burst", env=env, timeout=120)
    assert restored.returncode == 0, restored.stderr
    assert "index restored from" in restored.stderr
    assert "1 job(s) from the replica, 1 finished job(s) from results/" in restored.stderr
    index = Index(s3.db, readonly=True)
    states = {job_id: index.get(job_id)["state"] for job_id in (first.id, second.id, third.id)}
    assert set(states.values()) == {"succeeded"}
    # The restored row is the original one, with its attempt log.
    assert index.get(first.id)["attempt_log"][0]["outcome"] == "succeeded"


def test_replicate_on_without_litestream_is_a_clear_error(s3, monkeypatch):
    monkeypatch.setattr(replica, "find_litestream", lambda: None)  # as on a bare machine
    with pytest.raises(qlite.ConfigError, match="QLITE_REPLICATE=on but litestream is not"):
        replica.Replica.from_settings(s3.settings(replicate="on"))
    assert replica.Replica.from_settings(s3.settings(replicate="auto")) is None


def test_reindex_rebuilds_finished_jobs_from_results(s3):
    job = qlite.Client().put("test.always_fail")
    for _ in range(2):
        run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env)
        time.sleep(0.2)
    assert job.status()["state"] == "failed"
    s3.db.unlink()
    result = run_qlite("reindex", env=s3.env)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 job(s)" in result.stdout
    row = Index(s3.db, readonly=True).get(job.id)
    assert (row["state"], row["attempts"]) == ("failed", 2)
    assert [a["message"] for a in row["attempt_log"]] == ["boom", "boom"]
