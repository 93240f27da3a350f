"""What the next owner of a fleet shard needs from the index that held it and which the bucket
does not have: the attempts, retry times and errors of its jobs waiting for a retry, and the
last ticks of its periodic schedules. Read from this worker's own index when it hands a shard
over (coord/handoff/), or from a dead worker's Litestream replica (restored to a scratch file,
only read) when its shards are taken without a handoff (docs/fleet.md, "Durability per
shard").

A carried job is applied when its inbox object is taken in again (Index.carry): the attempt
count goes on where it stopped, so the retry runs as attempt 2, not as a new attempt 1.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlite import envelope
from qlite.errors import ConfigError, IndexUnavailable
from qlite.index.db import Index, check_file
from qlite.settings import Settings
from qlite.worker.replica import find_litestream, restore_peer

log = logging.getLogger(__name__)


@dataclass
class Carried:
    """Jobs waiting for a retry (id -> attempts, run_at, error, lost, crashes, log) and
    schedules' last ticks (name -> tick) of some shards."""
    jobs: dict[str, dict] = field(default_factory=dict)
    schedules: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.schedules)

    def of(self, shard: int, nshards: int) -> Carried:
        return Carried(
            {i: j for i, j in self.jobs.items() if envelope.shard_of(i, nshards) == shard},
            {n: t for n, t in self.schedules.items() if schedule_shard(n, nshards) == shard})

    def to_json(self) -> dict:
        return {"jobs": self.jobs, "schedules": self.schedules}

    @classmethod
    def from_json(cls, body: dict) -> Carried:
        return cls(dict(body.get("jobs") or {}), dict(body.get("schedules") or {}))


def schedule_shard(name: str, nshards: int) -> int:
    """The shard whose owner fires schedule ``name`` (worker/shards.py owns_schedule)."""
    return envelope.shard_of(envelope.key_id(f"schedule:{name}"), nshards)


def read(index: Index, shards: set[int], nshards: int, *, died: bool = False) -> Carried:
    """The jobs of ``shards`` in ``index`` that already spent attempts and wait for another
    one, with their attempt log, and the last ticks of the schedules of ``shards``. ``died``:
    the index is a dead worker's, so its running jobs are carried too, as reap would leave
    them: the attempt lost to the death is given back (``lost``), not charged."""
    rows = index.carried(shards, nshards, running=died)
    fields = ("attempt", "owner", "started_at", "finished_at", "outcome", "error_type",
              "message", "traceback", "logs")
    jobs = {}
    for r in rows:
        # As the columns hold them: error and each attempt's logs as JSON text.
        log = [{k: getattr(a, k) for k in fields} for a in r.attempt_log]
        for a in log:
            a["logs"] = json.dumps(a["logs"]) if a["logs"] is not None else None
        entry: dict[str, Any] = {"attempts": r.attempts, "run_at": r.run_at,
                 "error": json.dumps(r.error) if r.error is not None else None,
                 "lost": r.lost, "crashes": r.crashes, "log": log}
        if r.state == "running":
            message = (f"the worker running attempt {r.attempts} died "
                       f"({r.owner or '?'}); its shard was taken over")
            entry.update(lost=r.lost + 1, run_at=0.0, error=json.dumps(
                {"type": "WorkerLost", "message": message, "traceback": None}))
            for a in log:
                if a["attempt"] == r.attempts and a["finished_at"] is None:
                    a.update(finished_at=a["started_at"], outcome="lost",
                             error_type="WorkerLost", message=message)
        jobs[r.id] = entry
    schedules = {s["name"]: s["last_tick"] for s in index.schedules().values()
                 if schedule_shard(s["name"], nshards) in shards}
    return Carried(jobs, schedules)


def readable(settings: Settings) -> bool:
    """Whether this worker can read another index's replica (Litestream on and installed)."""
    return settings.replicate != "off" and find_litestream() is not None


def from_replica(settings: Settings, node: str, shards: set[int], nshards: int) -> Carried:
    """Restore the replica of the dead worker's index ``node`` (``index/{node}/``) into a
    scratch file and read what its ``shards`` carry. Only reads the replica: its one writer is
    that worker (or the worker restarted on its index). Raises ConfigError when there is no
    usable replica (Litestream off or missing, no replica, a restore that fails its check)."""
    scratch = Path(tempfile.mkdtemp(prefix=".qlite-peer-", dir=settings.db_path().parent))
    try:
        out = scratch / "peer.db"
        if not restore_peer(settings, node, out):
            raise ConfigError(f"no replica of index {node} in the bucket")
        problem = check_file(out)
        if problem is not None:
            raise ConfigError(f"the replica of index {node} is unusable: {problem}")
        peer = Index(out, readonly=True)
        try:
            return read(peer, shards, nshards, died=True)
        except IndexUnavailable as e:
            raise ConfigError(f"the replica of index {node} cannot be read: {e}") from e
        finally:
            peer.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
