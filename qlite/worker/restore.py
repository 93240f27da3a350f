"""Open the worker's index. On a fresh disk it is built aside first: the Litestream replica
restored (if any) and checked, plus what finished after its last sync from results/, then moved
into place, so a crash half-way leaves no half-built index behind.

A replica that cannot be restored, or whose restore fails ``PRAGMA quick_check`` or lacks a
table of the schema, never stops the worker: the restored file is kept aside
(``index.db.bad-STAMP``), the replica's objects are moved to ``index-bad/{node}-STAMP/`` in the
bucket (so the new index starts a clean replica), and the index is rebuilt from the bucket as
``qlite reindex`` does, with a warning naming what only the index held.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from qlite.errors import ConfigError
from qlite.index.db import Index, check_file
from qlite.index.reindex import reindex
from qlite.store import Store
from qlite.worker.replica import Replica

log = logging.getLogger(__name__)
# How long a new worker waits for a killed worker's Litestream to finish its shutdown sync
# (Litestream's shutdown-sync-timeout is 30 s) before it restores the replica.
WRITER_WAIT = 45.0


def open_index(path: Path, store: Store, replica: Replica | None) -> Index:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers sharing the index build it once
        if not path.exists():
            _build(path, store, replica)
    # A replicated index is checkpointed by Litestream only (Index's docstring).
    return Index(path, checkpoint=replica is None)


def _build(path: Path, store: Store, replica: Replica | None) -> None:
    new = path.with_name(path.name + ".new")
    _remove(new)
    problem = None
    if replica is not None:
        # Restore only once no other Litestream writes the replica: a restore that reads while
        # a previous writer still uploads can mix two states (issue 19).
        if not replica.acquire(wait=WRITER_WAIT):
            log.warning("another litestream still holds %s after %.0fs; restoring anyway, the "
                        "restore is checked", replica.lockfile, WRITER_WAIT)
        try:
            if replica.restore(new):
                problem = check_file(new)
        except ConfigError as e:
            problem = str(e)
        if problem is not None:
            _set_aside(path, new, store, replica, problem)
    index = Index(new)
    restored = sum(index.counts().values())
    _, written = reindex(store, index)
    index.close()
    for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)  # a WAL left by a deleted index must not replay
    os.replace(new, path)
    log.info("new index: %d job(s) from the replica, %d finished job(s) from results/",
             restored, written)


def _set_aside(path: Path, new: Path, store: Store, replica: Replica, problem: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    bad = path.with_name(f"{path.name}.bad-{stamp}")
    kept = "nothing was restored"
    if new.exists():
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{new}{suffix}").exists():
                os.replace(f"{new}{suffix}", f"{bad}{suffix}")
        kept = f"the restored file is kept in {bad}"
    _remove(new)
    aside = f"index-bad/{replica.key.removeprefix('index/').rstrip('/')}-{stamp}/"
    moved = _move(store, replica.key, aside)
    log.warning(
        "index replica s3://%s/%s is unusable (%s); %s and the replica's %d object(s) in "
        "s3://%s/%s%s. Rebuilding the index from the bucket (results/, then inbox/): lost are "
        "the attempt history of unfinished jobs (their attempt counts start again, so "
        "crash-loop protection starts over), the last fired times of periodic schedules (a "
        "tick may fire once more), quarantine notes and stats counters",
        replica.bucket, replica.path, problem, kept, moved, replica.bucket,
        store.url.prefix, aside)


def _move(store: Store, src: str, dst: str) -> int:
    """Copy every object under ``src`` to ``dst``, then delete the originals; the count."""
    keys = [key for key, _ in store.iter_keys(src)]
    try:
        for key in keys:
            store.copy(key, dst + key.removeprefix(src))
        store.delete_many(keys)
    except Exception as e:  # the new index must not replicate on top of the bad history
        raise ConfigError(f"index replica {src}: moving it aside to {dst} failed: {e}. Try: "
                          "start the worker again, or delete that prefix by hand") from e
    return len(keys)


def _remove(db: Path) -> None:
    for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
