"""The loop's side of the fleet: what the fleet thread decided (worker/fleet.py, S3 only),
applied to the index (SQLite, the loop's thread only). Drops the rows of shards taken from
this worker or taken back after another index ran them, starts on new shards, drains and
hands over the shards to give away (with their jobs waiting for a retry and their schedules'
last ticks), and says which jobs and schedules are this worker's now.

A shard taken from a dead worker of another index is held back (nothing of it is taken in,
run or fired) until that index's Litestream replica has been read for the shard's history
(worker/carry.py), on a thread of its own; without a replica it starts with what the bucket
has.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from qlite import envelope
from qlite.errors import ConfigError, IndexUnavailable, StorageError
from qlite.index.db import Index
from qlite.store import Store
from qlite.worker import carry
from qlite.worker.carry import Carried
from qlite.worker.fleet import Fleet, _ranges, handoff_key
from qlite.worker.ingest import Ingest

log = logging.getLogger(__name__)


class Shards:
    def __init__(self, fleet: Fleet, index: Index, store: Store, ingest: Ingest):
        self.fleet = fleet
        self.index = index
        self.store = store
        self.ingest = ingest
        self.active: set[int] = set()  # owned shards whose jobs may start here now
        # shard being handed over -> its jobs waiting for a retry (for coord/handoff/)
        self.handing: dict[int, Carried] = {}
        self.drained: set[int] = set()  # shards handed over, waiting for the table
        # Shards taken from a dead worker, held back while its replica is read
        self.held: set[int] = set()
        self.reading: list[tuple[Future, set[int], str]] = []  # (what it read, shards, node)
        self.reader: ThreadPoolExecutor | None = None

    def start(self, published: Callable[[], int]) -> None:
        """Join the fleet and take a first share before the worker takes anything in; forget
        the rows of shards another index holds now (a restart after another worker took
        them: they are in the bucket and that worker has them)."""
        self.fleet.jobs = published
        self.fleet.start()
        self.ingest.shards = self.fleet.shards
        self.step()
        foreign = self.fleet.foreign()
        if foreign:
            dropped = self.index.drop_shards(foreign, self.fleet.shards)
            if dropped:
                log.info("dropped %d row(s) of %d shard(s) another worker holds now (they "
                         "are in the bucket; that worker runs them)", dropped, len(foreign))
        self.ingest.accept = self.accepts

    def trusted(self) -> bool:
        return self.fleet.trusted()

    def claimable(self) -> tuple[set[int], int]:
        """Index.claim's ``shards``: the shards whose jobs may start, of how many."""
        return self.active, self.fleet.shards

    def accepts(self, job_id: str) -> bool:
        return envelope.shard_of(job_id, self.fleet.shards) in self.active

    def owns_schedule(self, name: str) -> bool:
        return self.accepts(envelope.key_id(f"schedule:{name}"))

    def step(self) -> bool:
        """Apply the fleet's changes; True when shards were taken or came out of hold (take
        them in now)."""
        fleet = self.fleet
        changes = fleet.take_changes()
        stale = {s for s, is_stale in changes.acquired.items() if is_stale} | changes.lost
        if stale:
            dropped = self.index.drop_shards(stale, fleet.shards)
            if dropped:
                log.info("dropped %d stale row(s) of %d shard(s) another worker holds or held",
                         dropped, len(stale))
        self.held -= changes.lost
        if changes.release:
            self._hand_over(changes.release)
        if changes.handoff:
            self._take_handoff(changes.handoff)
        if changes.died:
            self._read_replicas(changes.died)
        started = self._finish_reading()
        taken_over = ({s for s, is_stale in changes.acquired.items() if is_stale}
                      - self.held) | started
        if taken_over:
            self.ingest.took_over(taken_over)
        if changes.acquired or started:
            for queue in self.ingest.sweeps:
                self.ingest.expect(queue)
        self.active = set(fleet.owned) - fleet.releasing - self.held
        self.drained &= fleet.releasing
        for shard in list(fleet.releasing - self.drained - self.held):
            if shard in fleet.owned and not self.index.shards_busy({shard}, fleet.shards):
                fleet.released(shard, handoff=self._hand_over({shard}, final=True))
                self.drained.add(shard)
        return bool(changes.acquired or started)

    def leave(self) -> None:
        """SIGTERM: hand every shard over, with its jobs waiting for a retry and its
        schedules' last ticks (a replica still being read is waited for, within reason)."""
        for future, _, _ in self.reading:
            try:
                future.result(timeout=self.fleet.lease / 2)
            except Exception:
                pass  # _finish_reading says why
        self._finish_reading(stash=True)
        self.fleet.leave(handoff=self._leave_handoff)
        if self.reader is not None:
            self.reader.shutdown(wait=False, cancel_futures=True)

    def _leave_handoff(self, shards: set[int]) -> set[int]:
        try:
            self._stash(carry.read(self.index, shards, self.fleet.shards), shards)
            return {shard for shard in shards if self._write_handoff(shard)}
        except Exception as e:  # the shards go anyway; their next owners start afresh
            log.warning("handing over the jobs waiting for a retry failed (%s: %s): their "
                        "attempt counts start again on the next owner", type(e).__name__, e)
            return set()

    def _stash(self, got: Carried, shards: set[int]) -> None:
        """Keep what ``shards`` carry for their next owner (coord/handoff/)."""
        nshards = self.fleet.shards
        for shard in shards:
            part = got.of(shard, nshards)
            have = self.handing.setdefault(shard, Carried())
            have.jobs.update(part.jobs)
            have.schedules.update(part.schedules)

    def _write_handoff(self, shard: int) -> bool:
        handed = self.handing.pop(shard, Carried())
        if handed:
            body = json.dumps({"v": 2, "shard": shard, **handed.to_json()}).encode()
            self.store.put(handoff_key(shard), body)
        return bool(handed)

    def _hand_over(self, shards: set[int], final: bool = False) -> bool:
        """Shards to hand over: keep their jobs waiting for a retry (attempts spent, retry
        time, errors) and schedules' last ticks aside and forget every job not started (the
        next owner takes them in from the inbox again). Once drained (``final``), leave them
        in coord/handoff/ for the next owner; returns whether a handoff object was written."""
        nshards = self.fleet.shards
        self._stash(carry.read(self.index, shards, nshards), shards)
        self.index.drop_waiting(shards, nshards)
        if not final:
            return False
        (shard,) = shards
        return self._write_handoff(shard)

    def _take_handoff(self, shards: set[int]) -> None:
        for shard in shards:
            found = self.store.get_or_none(handoff_key(shard))
            if found is None:
                continue
            try:
                got = Carried.from_json(json.loads(found))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("handoff of shard %d is malformed: its retries start afresh", shard)
                continue
            self._apply(got)
            self.store.delete_many([handoff_key(shard)])
            log.info("took over %d job(s) waiting for a retry in shard %d, with their "
                     "attempts, and %d schedule(s)' last tick", len(got.jobs), shard,
                     len(got.schedules))

    def _apply(self, got: Carried) -> None:
        """Carried jobs get their attempts when taken in; schedules' ticks go in now."""
        self.ingest.carried.update({i: {"id": i, **j} for i, j in got.jobs.items()})
        if got.schedules:
            self.index.carry_schedules(got.schedules)

    def _read_replicas(self, died: dict[int, str]) -> None:
        """Shards taken from dead workers: hold them back and read each index's replica on
        the reader thread (a restore takes seconds; the loop goes on meanwhile)."""
        if not carry.readable(self.ingest.settings):
            log.info("%d shard(s) %s taken from a dead worker start with what the bucket has "
                     "(Litestream is off here, so its replica is not read): their jobs "
                     "waiting for a retry start their attempt count again and their "
                     "schedules fire from now", len(died), _ranges(died))
            return
        by_node: dict[str, set[int]] = {}
        for shard, node in died.items():
            by_node.setdefault(node, set()).add(shard)
        if self.reader is None:
            self.reader = ThreadPoolExecutor(1, thread_name_prefix="qlite-carry")
        for node, shards in by_node.items():
            self.held |= shards
            future = self.reader.submit(carry.from_replica, self.ingest.settings, node,
                                        set(shards), self.fleet.shards)
            self.reading.append((future, shards, node))

    def _finish_reading(self, stash: bool = False) -> set[int]:
        """Apply the replicas read since the last step; returns the shards that may start."""
        started: set[int] = set()
        for item in [r for r in self.reading if r[0].done()]:
            self.reading.remove(item)
            future, shards, node = item
            self.held -= shards
            shards = shards & set(self.fleet.owned)  # lost meanwhile: nothing to apply
            try:
                got = future.result()
            except Exception as e:  # ConfigError, IndexUnavailable, StorageError, a timeout
                if not isinstance(e, ConfigError | IndexUnavailable | StorageError):
                    e = ConfigError(f"{type(e).__name__}: {e}")
                log.warning(
                    "%d shard(s) %s taken from dead worker index %s start with what the "
                    "bucket has (%s): their jobs waiting for a retry start their attempt "
                    "count again and their schedules fire from now", len(shards),
                    _ranges(shards), node, e)
                got = Carried()
            else:
                log.info("%d shard(s) %s taken from dead worker index %s: %d job(s) waiting "
                         "for a retry or lost while running keep their attempts, %d "
                         "schedule(s) their last tick (read from its replica)", len(shards),
                         _ranges(shards), node, len(got.jobs), len(got.schedules))
            moving = shards & self.fleet.releasing if not stash else shards
            self._stash(got, moving)  # handed on: the next owner gets them
            self._apply(_only(got, shards - moving, self.fleet.shards))
            started |= shards - moving
        return started


def _only(got: Carried, shards: set[int], nshards: int) -> Carried:
    out = Carried()
    for shard in shards:
        part = got.of(shard, nshards)
        out.jobs.update(part.jobs)
        out.schedules.update(part.schedules)
    return out
