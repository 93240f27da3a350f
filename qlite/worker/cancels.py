"""Cancelling running jobs: each running job's ``ctx.cancelled`` event, raised when a
cancellation of it is requested (``qlite cancel`` on a running job, docs/states.md).

The request itself arrives as a marker object that ingest takes into the index; the loop asks
the index at most twice a second which of its running jobs have one, and sets their events. A
handler sees ``ctx.cancelled`` and returns; a child process is killed (isolate.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from qlite.index.db import Index
from qlite.worker.execute import Claim
from qlite.worker.logs import job_fields

log = logging.getLogger(__name__)

EVERY = 0.5  # seconds between two looks at the index


class Cancels:
    """The ``ctx.cancelled`` events of the running jobs, by job id."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.next_check = 0.0

    def open(self, job_id: str) -> threading.Event:
        """The event of a job starting now (its ``ctx.cancelled``)."""
        event = self.events[job_id] = threading.Event()
        return event

    def requested(self, job_id: str) -> bool:
        """Whether the running job's cancellation was requested."""
        event = self.events.get(job_id)
        return event is not None and event.is_set()

    def close(self, job_id: str) -> None:
        """The job's outcome is recorded: forget its event."""
        self.events.pop(job_id, None)

    def check(self, index: Index, running: Iterable[Claim], now: float) -> None:
        """Raise ctx.cancelled for running jobs whose cancellation was requested."""
        claims = list(running)
        if not claims or now < self.next_check:
            return
        self.next_check = now + EVERY
        for job_id in index.cancelling(list(self.events)):
            if not self.events[job_id].is_set():
                claim = next((c for c in claims if c.id == job_id), None)
                log.info("cancellation requested for the running job",
                         extra=job_fields(claim) if claim else {"job_id": job_id})
                self.events[job_id].set()
