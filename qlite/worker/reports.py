"""The latest ``ctx.progress`` of running jobs, on its way into the index (``qlite ls``,
``qlite show``, the dashboard). Handler threads add reports (``add``, passed to execute.py and
isolate.py as ``on_progress``); the loop writes the latest of each job at most once a second,
in one transaction. The PUT of ``results/{id}.progress.json`` is progress.py's."""

from __future__ import annotations

import threading

from qlite.index.db import Index

EVERY = 1.0  # seconds between two writes to the index


class Reports:
    def __init__(self) -> None:
        # job id -> (id, attempt, report): reports not yet in the index
        self.latest: dict[str, tuple[str, int, dict]] = {}
        self.lock = threading.Lock()
        self.next_at = 0.0

    def add(self, job_id: str, attempt: int, report: dict) -> None:
        """A handler thread's report; a later one of the same job replaces it."""
        with self.lock:
            self.latest[job_id] = (job_id, attempt, report)

    def flush(self, index: Index, owner: str, now: float) -> None:
        """Put the reports gathered since the last write into the index, if it is time."""
        if now < self.next_at:
            return
        self.next_at = now + EVERY
        with self.lock:
            reports, self.latest = list(self.latest.values()), {}
        if reports:
            index.set_progress(reports, owner)
