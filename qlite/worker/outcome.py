"""What a finished attempt leads to: a pure function of the outcome, the retry policy and the
time, so the state decision is tested without S3 or SQLite (docs/states.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from qlite.worker.execute import Outcome
from qlite.worker.retry import RetryPolicy


@dataclass(frozen=True)
class Decision:
    """``state`` is what Index.finish takes: succeeded, cancelled, snooze, failed or retry."""

    state: str
    error: dict[str, Any] | None = None
    run_at: float | None = None
    result: Any = None

    @property
    def label(self) -> str:
        return {"snooze": "snoozed"}.get(self.state, self.state)


def decide(outcome: Outcome, *, attempt: int, max_attempts: int, backoff: Any,
           cancelled: bool, now: float, rng: random.Random) -> Decision:
    """A success is final; a cancel requested while the attempt ran wins over its error; a
    snooze runs again after its delay without spending an attempt's worth of backoff; an
    error retries with backoff while attempts are left, unless it said ``failed``."""
    if outcome.state == "succeeded":
        return Decision("succeeded", result=outcome.result)
    if cancelled:
        return Decision("cancelled", error={
            "type": "Cancelled", "traceback": (outcome.error or {}).get("traceback"),
            "message": f"cancelled on request while running attempt {attempt}"})
    if outcome.state == "snooze":
        return Decision("snooze", run_at=now + (outcome.delay or 0))
    error = outcome.error or {}
    if outcome.state == "failed":
        return Decision("failed", error=error)
    run_at = RetryPolicy(max_attempts=max_attempts, base=backoff).next_run(
        attempt, now, rng, after=outcome.delay)
    return Decision("failed", error=error) if run_at is None else Decision(
        "retry", error=error, run_at=run_at)
