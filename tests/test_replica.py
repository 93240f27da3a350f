"""Litestream replication of the index: a worker on a fresh disk restores it from the bucket."""

import fcntl
import os
import re
import shutil
import signal
import sqlite3

import pytest

import qlite
from conftest import bucket_keys, eventually, start_worker
from conftest import qlite as run_qlite
from qlite.index.db import Index, check_file
from qlite.store import Store
from qlite.worker import replica
from qlite.worker.restore import open_index


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
    states = {job_id: index.get(job_id).state for job_id in (first.id, second.id, third.id)}
    assert set(states.values()) == {"succeeded"}
    # The restored row is the original one, with its attempt log.
    assert index.get(first.id).attempt_log[0].outcome == "succeeded"


def test_replicate_on_without_litestream_is_a_clear_error(s3, monkeypatch):
    monkeypatch.setattr(replica, "find_litestream", lambda: None)  # as on a bare machine
    with pytest.raises(qlite.ConfigError, match="QLITE_REPLICATE=on but litestream is not"):
        replica.Replica.from_settings(s3.settings(replicate="on"))
    assert replica.Replica.from_settings(s3.settings(replicate="auto")) is None


def test_reindex_rebuilds_finished_jobs_from_results(s3):
    job = qlite.Client().put("test.always_fail")

    def failed() -> bool:  # two attempts, the second after a back-off of 0.05 s
        run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env)
        return job.status()["state"] == "failed"

    eventually(failed, what="the job's second failure")
    s3.db.unlink()
    result = run_qlite("reindex", env=s3.env)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 job(s)" in result.stdout
    row = Index(s3.db, readonly=True).get(job.id)
    assert (row.state, row.attempts) == ("failed", 2)
    assert [a.message for a in row.attempt_log] == ["boom", "boom"]


def _replicate_a_corrupt_index(s3) -> None:
    """Put a replica of a malformed index in the bucket with real Litestream: a table's root
    page overwritten after the schema was written, as a torn replica would restore."""
    index = Index(s3.db)
    index.close()  # the last connection checkpoints the WAL into the file
    conn = sqlite3.connect(s3.db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    conn.close()
    with open(s3.db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)  # not a b-tree page type
    rep = replica.Replica(s3.settings(replicate="on"), replica.find_litestream())
    assert rep.acquire()
    rep.start()
    try:
        assert rep.sync(), "litestream did not confirm the replica"
    finally:
        rep.stop()
    shutil.rmtree(s3.db.with_name(f".{s3.db.name}-litestream"), ignore_errors=True)
    for path in s3.db.parent.glob(s3.db.name + "*"):
        path.unlink()  # the disk is lost


def test_a_malformed_replica_is_set_aside_and_the_index_rebuilt_from_the_bucket(s3):
    env = {**s3.env, "QLITE_REPLICATE": "on"}
    client = qlite.Client()
    done = client.put("math.add", [1, 2])
    assert run_qlite("worker", "--app", "testapp:app", "--burst",
                     env={**s3.env, "QLITE_DB": str(s3.db.with_name("other.db"))},
                     timeout=120).returncode == 0
    _replicate_a_corrupt_index(s3)
    waiting = client.put("math.add", [2, 3])

    worker = run_qlite("worker", "--app", "testapp:app", "--burst", env=env, timeout=120)

    assert worker.returncode == 0, worker.stderr
    assert "is unusable (" in worker.stderr and "malformed" in worker.stderr, worker.stderr
    assert "attempt history of unfinished jobs" in worker.stderr
    kept = [p for p in s3.db.parent.glob(s3.db.name + ".bad-*")
            if not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and str(kept[0]) in worker.stderr
    assert check_file(kept[0]) is not None  # the evidence, still malformed
    node = replica.node_name(s3.settings())
    assert bucket_keys(s3, f"index-bad/{node}-"), "the bad replica was not kept in the bucket"
    index = Index(s3.db, readonly=True)
    assert index.get(done.id).state == "succeeded"  # from results/
    assert index.get(waiting.id).state == "succeeded"  # from inbox/, run now
    assert waiting.status()["result"] == 5

    # The rebuilt index replicates to a clean path: the next lost disk restores it.
    s3.db.unlink()
    again = run_qlite("worker", "--app", "testapp:app", "--burst", env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "is unusable" not in again.stderr
    assert "2 job(s) from the replica, 0 finished job(s) from results/" in again.stderr


def test_a_replica_whose_restore_fails_does_not_stop_the_worker(s3):
    env = {**s3.env, "QLITE_REPLICATE": "on"}
    first = qlite.Client().put("math.add", [1, 2])
    assert run_qlite("worker", "--app", "testapp:app", "--burst", env=env,
                     timeout=120).returncode == 0
    s3.db.unlink()
    node = replica.node_name(s3.settings())
    client = s3.server.client()
    for key in bucket_keys(s3, f"index/{node}/"):  # every LTX file cut short
        client.put_object(Bucket=s3.bucket, Key=s3.prefix + key, Body=b"LTX1 torn")

    worker = run_qlite("worker", "--app", "testapp:app", "--burst", env=env, timeout=120)

    assert worker.returncode == 0, worker.stderr
    assert "is unusable (litestream restore" in worker.stderr, worker.stderr
    assert "nothing was restored" in worker.stderr
    assert Index(s3.db, readonly=True).get(first.id).state == "succeeded"


def test_a_replicated_index_leaves_its_checkpoints_to_litestream(s3, tmp_path):
    """Issue 19's root cause: a checkpoint by the worker while no Litestream runs (a killed
    worker's Litestream has exited, the next one has not started) makes Litestream 0.5 write
    a replica that restores malformed (scripts/replica_race.py). So the worker's connection
    to a replicated index never checkpoints; an index that is not replicated still does."""
    store_settings = s3.settings(replicate="on")
    binary = replica.find_litestream()
    assert binary is not None
    index = open_index(store_settings.db_path(), Store(store_settings.require_url(),
                                                       store_settings.endpoint_url),
                       replica.Replica(store_settings, binary))
    assert index.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    index.close()

    backfilled = {}
    for checkpoint in (True, False):
        path = tmp_path / f"checkpoint-{checkpoint}.db"
        index = Index(path, checkpoint=checkpoint)
        before = path.stat().st_size
        index.conn.execute("CREATE TABLE filler (b BLOB)")
        for _ in range(20):  # some 4,000 pages through the WAL, past the 1,000 of autocheckpoint
            with index.conn:
                index.conn.execute("INSERT INTO filler VALUES (randomblob(800000))")
        backfilled[checkpoint] = path.stat().st_size > before  # pages copied into the file
        index.close()
    assert backfilled == {True: True, False: False}


def test_a_killed_workers_litestream_keeps_the_replica_until_it_exits(s3, tmp_path):
    """kill -9 of a worker leaves its Litestream alive for its shutdown sync (SIGTERM by
    PR_SET_PDEATHSIG, up to 30 s): the next worker must not start a second Litestream on the
    replica path before that one has exited (issue 19). The Litestream child holds the
    replica lock itself; the test then holds the lock as such a survivor would."""
    env = {**s3.env, "QLITE_REPLICATE": "on"}
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    lockfile = s3.db.with_name(s3.db.name + ".replica.lock")
    first = start_worker("--app", "testapp:app", env=env, log=first_log)
    try:
        line = eventually(lambda: re.search(r"with litestream \(pid (\d+)\)",
                                            first_log.read_text()), what="litestream started")
        fds = [os.readlink(f"/proc/{line.group(1)}/fd/{f}")
               for f in os.listdir(f"/proc/{line.group(1)}/fd")]
        assert str(lockfile) in fds  # the lock outlives a SIGKILLed worker with its child
    finally:
        first.kill()
        first.wait()

    with open(lockfile, "a") as survivor:  # the killed worker's Litestream, still uploading
        eventually(lambda: _locked(survivor), what="the first litestream's exit")
        second = start_worker("--app", "testapp:app", env=env, log=second_log)
        try:
            job = qlite.Client().put("math.add", [1, 2])
            eventually(lambda: job.status()["state"] == "succeeded", what="a job run meanwhile")
            assert "replicating the index" not in second_log.read_text()
            fcntl.flock(survivor, fcntl.LOCK_UN)  # the survivor exits
            eventually(lambda: "replicating the index" in second_log.read_text(),
                       what="the new worker's litestream")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
    assert second.returncode == 0, second_log.read_text()[-3000:]


def _locked(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
