"""Crash attribution on the loop's side (docs/states.md): a suspect runs alone.

A suspect is a job that was running when its worker died, or whose own child process
crashed. The index marks it (reap, crash); the loop then starts nothing beside it: the jobs
running drain, the suspect starts, alone, in a child process when the app can be loaded by
name (so a crash is pinned on it), then the others. Strikes and worker deaths are counted in
the index, by one statement each.
"""

from __future__ import annotations

import logging

from qlite.index.db import Index
from qlite.index.rows import JobRow
from qlite.worker.execute import Claim
from qlite.worker.logs import job_fields

log = logging.getLogger(__name__)


class Suspects:
    def __init__(self) -> None:
        self.running: set[str] = set()  # running suspects: nothing starts beside them

    def hold(self, index: Index, queues: tuple[str, ...], now: float,
             shards: tuple[set[int], int] | None, busy: bool) -> bool:
        """Whether nothing may be claimed now: a suspect runs, or one could run and waits
        for the ``busy`` slots to drain."""
        return bool(self.running) or (busy and index.suspect_waiting(queues, now, shards))

    def started(self, row: JobRow, claim: Claim) -> bool:
        """Note a job starting; True when it is a suspect (it then runs in a child process
        if it can: if that dies, the crash is its own)."""
        if not row.suspect:
            return False
        self.running.add(claim.id)
        log.info("job runs alone: it was running when its worker died, or crashed its "
                 "process", extra=job_fields(claim))
        return True

    def ended(self, job_id: str) -> None:
        self.running.discard(job_id)
