"""Real servers for the suite: a SeaweedFS (and, when a test asks for it, a moto server) per
test process, a fresh prefix per test, and helpers to run the real ``qlite`` command, in
process or as worker processes, and to wait for what another process does.

Which servers: the suite runs on SeaweedFS; the store conformance suite
(tests/test_store_conformance.py) runs on SeaweedFS and moto server, so what differs between
S3 servers is checked on both. ``QLITE_TEST_SERVERS=seaweedfs,moto`` (``make test-all``) runs
every test on both; ``QLITE_TEST_ENDPOINT`` (``make test-endpoint``) runs them on one server
started elsewhere. Under pytest-xdist each worker process starts servers of its own."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qlite.settings import Settings
from qlite.testing.devserver import MotoServer, SeaweedFS, Server

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = Path(__file__).resolve().parent / "apps"
CHROMIUM = Path("/usr/bin/chromium")

KNOWN_SERVERS = ("seaweedfs", "moto")
SERVERS = [s.strip() for s in os.environ.get("QLITE_TEST_SERVERS", "seaweedfs").split(",")
           if s.strip()]
if not SERVERS or set(SERVERS) - set(KNOWN_SERVERS):
    raise pytest.UsageError(
        f"QLITE_TEST_SERVERS: expected a comma-separated list of {', '.join(KNOWN_SERVERS)} "
        f"(got {os.environ['QLITE_TEST_SERVERS']!r}). Try: QLITE_TEST_SERVERS=seaweedfs,moto")


def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str | None = None,
               every: float = 0.2) -> Any:
    """``check()``'s first truthy value, asking again (at most every ``every`` seconds) until
    ``timeout`` seconds have passed. For what another process or thread makes true (a log
    line, a file, a job's state). A falsy answer means "not yet" (a ``NotYet`` says what was
    seen, for the failure message); an assertion failing inside ``check`` fails at once. The
    timeout only bounds a test that would otherwise hang: generous, so that a busy machine
    does not fail it."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not (value := check()):
        if time.monotonic() >= deadline:
            name = what or getattr(check, "__name__", "the condition")
            raise AssertionError(f"{name} did not happen within {timeout:g}s; last: {value!r}")
        time.sleep(pause)
        pause = min(pause * 2, every)
    return value


class NotYet:
    """A falsy answer for ``eventually`` that carries what was seen."""

    def __init__(self, seen: Any):
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.seen)


def _started(make: Callable[[], Server], attempts: int = 3) -> Server:
    """A started server; a start that fails (a port taken between choosing it and binding it,
    by another test process) is tried again on fresh ports."""
    for attempt in range(attempts):
        server = make()
        try:
            server.start()
            server.create_bucket("qlite-tests")
            return server
        except Exception:
            server.stop(grace=0)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = _started(lambda: SeaweedFS(tmp_path_factory.mktemp("seaweedfs")))
    yield server
    server.stop(grace=0)  # its data goes with the session


@pytest.fixture(scope="session")
def moto():
    server = _started(MotoServer)
    yield server
    server.stop(grace=0)  # its data goes with the session


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


def _target(request, name: str, tmp_path: Path, monkeypatch, **extra: str) -> Target:
    server = request.getfixturevalue(
        {"seaweedfs": "seaweed", "moto": "moto", "external": "external"}[name])
    # One bucket per server, a fresh prefix per test: SeaweedFS gives every bucket volumes of
    # its own and runs out of them after some 80 buckets.
    bucket = EXTERNAL_BUCKET if name == "external" else "qlite-tests"
    server.create_bucket(bucket)
    prefix = f"t{uuid.uuid4().hex[:12]}/q/"
    url = f"s3://{bucket}/{prefix}"
    # QLITE_REPLICATE: tests/test_replica.py and the chaos suite turn it on.
    env = {**_clean_env(), **server.env(), "QLITE_URL": url, "QLITE_DB": str(tmp_path / "i.db"),
           "PYTHONPATH": str(TASKS_DIR), "QLITE_REPLICATE": "off", **extra}
    # In-process tests read the same settings from the environment.
    for k in [k for k in os.environ if k.startswith(("AWS_", "QLITE_")) and k != "AWS_CA_BUNDLE"]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith(("AWS_", "QLITE_")):
            monkeypatch.setenv(k, v)
    return Target(name, server, bucket, url, env, tmp_path / "i.db", prefix)


POLL = {"QLITE_POLL_MAX": "0.5", "QLITE_POLL_MIN": "0.1"}


@pytest.fixture(params=["external"] if EXTERNAL else SERVERS)
def s3(request, tmp_path, monkeypatch) -> Target:
    """A queue on the run's server(s): SeaweedFS unless QLITE_TEST_SERVERS says otherwise."""
    return _target(request, request.param, tmp_path, monkeypatch, **POLL)


@pytest.fixture(params=["external"] if EXTERNAL else KNOWN_SERVERS)
def any_s3(request, tmp_path, monkeypatch) -> Target:
    """Like ``s3`` but on SeaweedFS and moto server in every run: for what S3 servers may do
    differently (tests/test_store_conformance.py)."""
    return _target(request, request.param, tmp_path, monkeypatch, **POLL)


@pytest.fixture
def seaweed_target(request, tmp_path, monkeypatch) -> Target:
    """Like ``s3`` but SeaweedFS only (for what moto cannot show, e.g. refused credentials)."""
    if EXTERNAL:
        pytest.skip("needs the local SeaweedFS; QLITE_TEST_ENDPOINT selects another server")
    return _target(request, "seaweedfs", tmp_path, monkeypatch)


def qlite(*args: str, env: dict, input: str | None = None, timeout: float = 60,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``qlite`` console entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "qlite", *args], env=env, input=input,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT)


def start_worker(*args: str, env: dict, log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "qlite", "worker", *args], env=env,
                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def cli(*args: str, env: dict, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a ``qlite`` command in this process, as ``qlite`` would run it (``put`` through
    its argparse path, the rest through typer) with ``env`` as the whole environment: for
    the many checks of a command's output and errors. tests/test_cli.py runs each command
    once more through the real entry point in a subprocess."""
    from typer.testing import CliRunner

    from qlite.cli import put
    from qlite.cli.main import app

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = path  # --app MODULE:ATTR imports as the command would
    root = logging.getLogger()  # `qlite worker` sets up logging before it loads the app
    handlers, level = list(root.handlers), root.level
    try:
        if args[:1] == ("put",):
            out, err = io.StringIO(), io.StringIO()
            stdin = sys.stdin
            sys.stdin = io.StringIO(input or "")
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        code = put.main(list(args[1:]))
                    except SystemExit as e:  # argparse's usage errors
                        code = e.code if isinstance(e.code, int) else 1
            finally:
                sys.stdin = stdin
            return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
        result = CliRunner().invoke(app, list(args), input=input, prog_name="qlite")
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback is a bug: show it
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for p in path:
            sys.path.remove(p)
        root.handlers[:], root.level = handlers, level


def drain_with(app, target: Target, jobs, timeout: float = 60.0, settings: dict | None = None,
               worker: dict | None = None) -> list[dict]:
    """Run burst workers of ``app`` until every job is terminal; return their statuses."""
    from qlite.worker.loop import Worker

    def terminal() -> list[dict] | NotYet:
        Worker(app, target.settings(**(settings or {})), **(worker or {})).run(burst=True)
        statuses = [j.status() for j in jobs]
        done = all(s["state"] in ("succeeded", "failed", "cancelled") for s in statuses)
        return statuses if done else NotYet(statuses)

    return eventually(terminal, timeout, "every job finished")


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
