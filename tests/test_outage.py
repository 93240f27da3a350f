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
