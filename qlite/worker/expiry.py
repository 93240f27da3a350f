"""Expiry: a job not started before its ``expires_at`` (``ttl=``) is cancelled, not run.

The index knows when the next queued job expires; the loop asks it again only then, or when
new jobs came in (``soon``), so an idle worker sends no statement for expiry.
"""

from __future__ import annotations

import logging
from typing import Any

from qlite.index.db import Index
from qlite.worker.logs import job_fields

log = logging.getLogger(__name__)


class Expiry:
    def __init__(self) -> None:
        self.next_at = 0.0  # when the next queued job expires (0: look it up)

    def soon(self) -> None:
        """New jobs came in: one of them may expire sooner."""
        self.next_at = 0.0

    def run(self, index: Index, now: float, metrics: Any = None) -> None:
        """Cancel the jobs whose time is up, if any may be."""
        if now < self.next_at:
            return
        for row in index.expire(now):
            log.info("job expired before it started", extra=job_fields(row))
            if metrics is not None:
                metrics.job_expired(row.task)
        self.next_at = index.next_expiry() or float("inf")
