"""Open the worker's index. On a fresh disk it is built aside first: the Litestream replica
restored (if any), plus what finished after its last sync from results/, then moved into
place, so a crash half-way leaves no half-built index behind."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from qlite.index.db import Index
from qlite.index.reindex import reindex
from qlite.store import Store
from qlite.worker.replica import Replica

log = logging.getLogger(__name__)


def open_index(path: Path, store: Store, replica: Replica | None) -> Index:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers sharing the index build it once
        if not path.exists():
            _build(path, store, replica)
    return Index(path)


def _build(path: Path, store: Store, replica: Replica | None) -> None:
    new = path.with_name(path.name + ".new")
    for leftover in (new, Path(f"{new}-wal"), Path(f"{new}-shm")):
        leftover.unlink(missing_ok=True)
    if replica is not None:
        replica.restore(new)
    index = Index(new)
    restored = sum(index.counts().values())
    _, written = reindex(store, index)
    index.close()
    for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)  # a WAL left by a deleted index must not replay
    os.replace(new, path)
    log.info("new index: %d job(s) from the replica, %d finished job(s) from results/",
             restored, written)
