"""Real servers for the suite: one SeaweedFS and one moto server per session, a fresh bucket
per test, and helpers to run the real ``qlite`` command and worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from qlite.settings import Settings
from qlite.testing.devserver import MotoServer, SeaweedFS, Server

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = Path(__file__).resolve().parent / "apps"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        server.create_bucket("qlite-warmup")
        yield server


@pytest.fixture(scope="session")
def moto():
    with MotoServer() as server:
        yield server


# `make test-endpoint ENDPOINT=...`: the `s3` fixture runs against that one server instead.
EXTERNAL = os.environ.get("QLITE_TEST_ENDPOINT")
EXTERNAL_BUCKET = os.environ.get("QLITE_TEST_BUCKET", "qlite-tests")
EXTERNAL_KEYS = (os.environ.get("AWS_ACCESS_KEY_ID", "test"),
                 os.environ.get("AWS_SECRET_ACCESS_KEY", "test"))


class ExternalServer(Server):
    """An S3-compatible server started elsewhere (LocalStack, MinIO, AWS itself)."""

    def __init__(self, endpoint: str, keys: tuple[str, str]):
        self.endpoint, self.keys = endpoint, keys

    def env(self) -> dict[str, str]:
        return {**super().env(), "AWS_ACCESS_KEY_ID": self.keys[0],
                "AWS_SECRET_ACCESS_KEY": self.keys[1]}

    def client(self):  # noqa: ANN201
        from qlite.store import _make_client

        return _make_client(self.endpoint, aws_access_key_id=self.keys[0],
                            aws_secret_access_key=self.keys[1], region_name="us-east-1")


@pytest.fixture(scope="session")
def external():
    return ExternalServer(EXTERNAL, EXTERNAL_KEYS)


@dataclass
class Target:
    """A queue (a fresh prefix in the session's bucket) on a running server, plus the
    environment that points qlite at it."""
    name: str
    server: object
    bucket: str
    url: str
    env: dict
    db: Path
    prefix: str = ""  # the queue's key prefix in the bucket, ending with "/"

    def settings(self, **overrides) -> Settings:
        return Settings.load(env=self.env, **overrides)


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "QLITE_")) or k == "AWS_CA_BUNDLE"}


@pytest.fixture(params=["external"] if EXTERNAL else ["seaweedfs", "moto"])
def s3(request, tmp_path, monkeypatch) -> Target:
    server = request.getfixturevalue(
        {"seaweedfs": "seaweed", "moto": "moto", "external": "external"}[request.param])
    # One bucket per server, a fresh prefix per test: SeaweedFS gives every bucket volumes of
    # its own and runs out of them after some 80 buckets.
    bucket = EXTERNAL_BUCKET if EXTERNAL else "qlite-tests"
    server.create_bucket(bucket)
    prefix = f"t{uuid.uuid4().hex[:12]}/q/"
    url = f"s3://{bucket}/{prefix}"
    env = {**_clean_env(), **server.env(), "QLITE_URL": url, "QLITE_DB": str(tmp_path / "i.db"),
           "PYTHONPATH": str(TASKS_DIR), "QLITE_POLL_MAX": "0.5", "QLITE_POLL_MIN": "0.1",
           "QLITE_REPLICATE": "off"}  # tests/test_replica.py and the chaos suite turn it on
    # In-process tests read the same settings from the environment.
    for k in [k for k in os.environ if k.startswith(("AWS_", "QLITE_")) and k != "AWS_CA_BUNDLE"]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith(("AWS_", "QLITE_")):
            monkeypatch.setenv(k, v)
    return Target(request.param, server, bucket, url, env, tmp_path / "i.db", prefix)


@pytest.fixture
def seaweed_target(request, tmp_path, monkeypatch) -> Target:
    """Like ``s3`` but SeaweedFS only (for what moto cannot show, e.g. refused credentials)."""
    if EXTERNAL:
        pytest.skip("needs the local SeaweedFS; QLITE_TEST_ENDPOINT selects another server")
    seaweed = request.getfixturevalue("seaweed")
    bucket = "qlite-tests"
    seaweed.create_bucket(bucket)
    prefix = f"t{uuid.uuid4().hex[:12]}/q/"
    url = f"s3://{bucket}/{prefix}"
    env = {**_clean_env(), **seaweed.env(), "QLITE_URL": url,
           "QLITE_DB": str(tmp_path / "i.db"), "PYTHONPATH": str(TASKS_DIR),
           "QLITE_REPLICATE": "off"}
    for k, v in env.items():
        if k.startswith(("AWS_", "QLITE_")):
            monkeypatch.setenv(k, v)
    return Target("seaweedfs", seaweed, bucket, url, env, tmp_path / "i.db", prefix)


def qlite(*args: str, env: dict, input: str | None = None, timeout: float = 60,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``qlite`` console entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "qlite", *args], env=env, input=input,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT)


def start_worker(*args: str, env: dict, log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "qlite", "worker", *args], env=env,
                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def drain_with(app, target: Target, jobs, timeout: float = 30.0, settings: dict | None = None,
               worker: dict | None = None) -> list[dict]:
    """Run burst workers of ``app`` until every job is terminal; return their statuses."""
    import time

    from qlite.worker.loop import Worker

    deadline = time.monotonic() + timeout
    while True:
        Worker(app, target.settings(**(settings or {})), **(worker or {})).run(burst=True)
        statuses = [j.status() for j in jobs]
        if all(s["state"] in ("succeeded", "failed", "cancelled") for s in statuses):
            return statuses
        assert time.monotonic() < deadline, statuses
        time.sleep(0.05)


def bucket_keys(target: Target, prefix: str) -> list[str]:
    """Keys under the queue's ``prefix`` (relative to it), straight from the server."""
    resp = target.server.client().list_objects_v2(Bucket=target.bucket,
                                                   Prefix=target.prefix + prefix)
    return [o["Key"].removeprefix(target.prefix) for o in resp.get("Contents", [])]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (tests/test_dashboard.py, tests/test_feeds.py)."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed. Try: make browser (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert not errors, errors  # no script error and no CSP violation on the page
