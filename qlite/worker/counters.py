"""The worker's running totals in the index: S3 requests by operation and jobs published,
added as deltas at each heartbeat and at shutdown (``qlite stats``: requests per job, dollars
per million jobs)."""

from __future__ import annotations

from qlite.index.db import Index


class Counters:
    def __init__(self) -> None:
        self.flushed: dict[str, int] = {}  # the totals already added to the index

    def flush(self, index: Index, requests: dict[str, int], published: int,
              now: float) -> None:
        """Add what ``requests`` (S3 requests by operation, since the process started) and
        ``published`` (jobs acknowledged) grew by since the last flush."""
        totals = {f"s3.{op}": n for op, n in requests.items()}
        totals["jobs.published"] = published
        index.add_counters({k: n - self.flushed.get(k, 0) for k, n in totals.items()}, now)
        self.flushed = totals
