"""S3 answering 503 SlowDown, through a real proxy: producers retry then fail clearly; the
worker keeps running, backs off and resumes without losing or double-running anything."""

import time

import pytest
from faultproxy import FaultProxy

import qlite
from conftest import eventually, start_worker
from conftest import qlite as run_qlite


@pytest.fixture
def proxy(s3, monkeypatch):
    with FaultProxy(s3.server.endpoint) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", p.endpoint)
        yield p


def test_a_producer_retries_through_brief_slowdowns(s3, proxy):
    proxy.fail_next = 2
    job = qlite.Client().put("math.add", [1, 2])
    assert proxy.seen_503 == 2
    assert job.status()["state"] == "pending"


def test_a_producer_gives_up_with_a_clear_error_when_slowdown_persists(s3, proxy):
    proxy.failing.set()
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": proxy.endpoint}
    start = time.monotonic()
    result = run_qlite("put", "math.add", "[1, 2]", env=env)
    assert time.monotonic() - start < 60  # bounded: boto3's 4 attempts with back-off
    assert result.returncode == 1
    assert result.stderr.startswith("Error: s3: put") and "SlowDown" in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_worker_rides_out_a_slowdown_and_runs_every_job_once(s3, proxy, tmp_path):
    ledger = tmp_path / "ledger.txt"
    client = qlite.Client()
    first = client.put_many([{"task": "test.ledger", "kwargs": {"path": str(ledger)}}
                             for _ in range(20)])
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": proxy.endpoint}
    log = tmp_path / "worker.log"
    worker = start_worker("--app", "testapp:app", env=env, log=log)
    try:
        for job in first:
            job.wait(timeout=60)
        seen = proxy.seen_503
        proxy.failing.set()  # S3 overloaded for a while: the worker's calls fail, twice or more
        eventually(lambda: proxy.seen_503 >= seen + 8, what="the worker's requests refused")
        proxy.failing.clear()
        second = client.put_many([{"task": "test.ledger", "kwargs": {"path": str(ledger)}}
                                  for _ in range(20)])
        for job in second:
            assert job.wait(timeout=90)["state"] == "succeeded"
        assert worker.poll() is None  # it never stopped
    finally:
        worker.terminate()
        worker.wait(30)
    assert proxy.seen_503 > 0  # the outage was seen (boto3 retries; the loop backs off)
    runs = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert sorted(runs) == sorted(j.id for j in first + second)  # each exactly once


def test_while_results_cannot_be_written_the_worker_starts_no_more_jobs(s3, proxy, tmp_path):
    """Records failing to land (S3 down for writes): jobs that ran are known only to the
    local index, so the worker claims nothing more until a record lands (a lost disk then
    re-runs few jobs, docs/guarantees.md); then it drains, each job once."""
    ledger = tmp_path / "ledger.txt"
    jobs = qlite.Client().put_many([{"task": "test.ledger", "kwargs": {"path": str(ledger)}}
                                    for _ in range(3000)])
    refused = []

    def refuse(method: str, path: str) -> bool:
        if method == "PUT" and "/results/" in path:
            refused.append(path)
            return True
        return False

    proxy.refuse = refuse
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": proxy.endpoint}
    log = tmp_path / "worker.log"
    worker = start_worker("--app", "testapp:app", env=env, log=log)

    def ran() -> int:
        return len(ledger.read_text().splitlines()) if ledger.exists() else 0

    try:
        eventually(lambda: "claiming no more jobs" in log.read_text(), 60,
                   what="the worker noticing its records fail")
        # Passes of the outbox a second apart: the jobs claimed before have ended by then.
        seen = len(refused)
        eventually(lambda: len(refused) >= seen + 6, 60, what="six refused record writes")
        stalled = ran()
        eventually(lambda: len(refused) >= seen + 12, 60, what="six more refused writes")
        assert ran() == stalled < 3000  # nothing started while no record could land
        proxy.refuse = None
        for job in jobs[:50]:
            assert job.wait(timeout=120)["state"] == "succeeded"
        eventually(lambda: ran() >= 3000 or None, 120, what="every job run")
        assert "results written again: claiming resumes" in log.read_text()
    finally:
        worker.terminate()
        worker.wait(30)
    runs = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert sorted(runs) == sorted(j.id for j in jobs)  # each once
