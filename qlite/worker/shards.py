"""The loop's side of the fleet: what the fleet thread decided (worker/fleet.py, S3 only),
applied to the index (SQLite, the loop's thread only). Drops the rows of shards taken from
this worker or taken back after another index ran them, starts on new shards, drains and
hands over the shards to give away (with their jobs waiting for a retry), and says which jobs
and schedules are this worker's now."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from qlite import envelope
from qlite.index.db import Index
from qlite.store import Store
from qlite.worker.fleet import Fleet, handoff_key
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
        self.handing: dict[int, dict[str, dict]] = {}
        self.drained: set[int] = set()  # shards handed over, waiting for the table

    def start(self, published: Callable[[], int]) -> None:
        """Join the fleet and take a first share before the worker takes anything in."""
        self.fleet.jobs = published
        self.fleet.start()
        self.ingest.shards = self.fleet.shards
        self.step()
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
        """Apply the fleet's changes; True when new shards were taken (take them in now)."""
        fleet = self.fleet
        changes = fleet.take_changes()
        stale = {s for s, is_stale in changes.acquired.items() if is_stale} | changes.lost
        if stale:
            dropped = self.index.drop_shards(stale, fleet.shards)
            if dropped:
                log.info("dropped %d stale row(s) of %d shard(s) another worker holds or held",
                         dropped, len(stale))
        if changes.release:
            self._hand_over(changes.release)
        if changes.handoff:
            self._take_handoff(changes.handoff)
        if changes.acquired:
            taken_over = {s for s, is_stale in changes.acquired.items() if is_stale}
            if taken_over:
                self.ingest.took_over(taken_over)
            for queue in self.ingest.sweeps:
                self.ingest.expect(queue)
        self.active = set(fleet.owned) - fleet.releasing
        self.drained &= fleet.releasing
        for shard in list(fleet.releasing - self.drained):
            if shard in fleet.owned and not self.index.shards_busy({shard}, fleet.shards):
                fleet.released(shard, handoff=self._hand_over({shard}, final=True))
                self.drained.add(shard)
        return bool(changes.acquired)

    def leave(self) -> None:
        self.fleet.leave()

    def _hand_over(self, shards: set[int], final: bool = False) -> bool:
        """Shards to hand over: keep their jobs waiting for a retry (attempts spent, retry
        time) aside and forget every job not started (the next owner takes them in from the
        inbox again). Once drained (``final``), leave the retries in coord/handoff/ for the
        next owner; returns whether a handoff object was written."""
        nshards = self.fleet.shards
        for r in self.index.waiting_retries(shards, nshards):
            shard = envelope.shard_of(r["id"], nshards)
            self.handing.setdefault(shard, {})[r["id"]] = {
                "attempts": r["attempts"], "run_at": r["run_at"], "error": r["error"]}
        self.index.drop_waiting(shards, nshards)
        if not final:
            return False
        (shard,) = shards
        jobs = self.handing.pop(shard, {})
        if jobs:
            body = json.dumps({"v": 1, "shard": shard, "jobs": jobs}).encode()
            self.store.put(handoff_key(shard), body)
        return bool(jobs)

    def _take_handoff(self, shards: set[int]) -> None:
        for shard in shards:
            found = self.store.get_or_none(handoff_key(shard))
            if found is None:
                continue
            try:
                jobs = json.loads(found)["jobs"]
            except (ValueError, KeyError, TypeError):
                log.warning("handoff of shard %d is malformed: its retries start afresh", shard)
                continue
            self.ingest.carried.update({i: {"id": i, **j} for i, j in jobs.items()})
            self.store.delete_many([handoff_key(shard)])
            log.info("took over %d job(s) waiting for a retry in shard %d, with their "
                     "attempts", len(jobs), shard)
