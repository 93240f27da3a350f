"""The servers the benchmark starts for itself: SeaweedFS (S3) and redis-server (the peers'
broker), each on a free 127.0.0.1 port with its data in a temporary directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from qlite.testing.devserver import SeaweedFS, Server, free_port

BUCKET = "bench"


def start_seaweedfs(data_dir: Path) -> SeaweedFS:
    server = SeaweedFS(data_dir)
    try:
        server.start()
        server.create_bucket(BUCKET)
    except BaseException:
        server.stop()
        raise
    return server


class Redis(Server):
    """``redis-server`` without persistence (no RDB snapshots, no AOF); stopped like the
    S3 servers (``Server.stop``)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found. Try: apt-get install -y redis-server "
                               "(make bench does it when run as root)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.data_dir), "--daemonize", "no",
             "--protected-mode", "yes", "--logfile", str(self.data_dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout:.0f}s")
