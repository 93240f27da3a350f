"""A full disk under the index: the worker stops taking in and claiming, says so, loses
nothing, and resumes by itself once space is freed. The disk is a real 3 MB tmpfs."""

import signal
import subprocess
import time

import pytest

import qlite
from conftest import eventually, start_worker


def wait_for_text(path, text, proc):
    def logged():
        assert proc.poll() is None, path.read_text()[-3000:]
        return text in path.read_text()

    eventually(logged, what=f"{text!r} in {path}")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_claiming_loses_nothing_and_resumes(s3, small_disk, tmp_path):
    env = {**s3.env, "QLITE_DB": str(small_disk / "index.db")}
    log = tmp_path / "worker.log"
    worker = start_worker("--app", "testapp:app", env=env, log=log)
    wait_for_text(log, "worker started", worker)

    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass  # the disk is full
    jobs = qlite.Client().put_many([("math.add", ["x" * 20000, str(i)]) for i in range(10)])
    wait_for_text(log, "disk full under the index", worker)
    time.sleep(1.0)
    assert worker.poll() is None  # still running
    assert {j.status()["state"] for j in jobs} == {"pending"}  # nothing lost, nothing run

    filler.unlink()
    results = [j.wait(timeout=60) for j in jobs]
    assert [r["result"] for r in results] == ["x" * 20000 + str(i) for i in range(10)]
    assert "the index is writable again: resuming" in log.read_text()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
