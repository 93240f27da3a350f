"""Recording a finished attempt in the index: the decision (outcome.py, pure), then one
fenced statement (Index.finish: id + attempt + owner), then the log line that says what
happened. A stale attempt (the job was reaped and claimed again) changes nothing."""

from __future__ import annotations

import logging
import random
from typing import Any

from qlite.index.db import MAX_CRASHES, Index
from qlite.worker.execute import Claim, Outcome
from qlite.worker.logs import job_fields
from qlite.worker.outcome import Decision, decide

log = logging.getLogger(__name__)


def record(index: Index, claim: Claim, outcome: Outcome, *, owner: str, backoff: Any,
           cancelled: bool, now: float, rng: random.Random) -> tuple[Decision, bool]:
    """Record the attempt's outcome; returns the decision and whether it was recorded
    (False: a stale attempt, ignored)."""
    if outcome.progress is not None:  # the last report, kept in the job's record
        index.set_progress([(claim.id, claim.attempt, outcome.progress)], owner)
    fields = job_fields(claim)
    d = decide(outcome, attempt=claim.attempt, max_attempts=claim.max_attempts,
               backoff=backoff, cancelled=cancelled, now=now, rng=rng)
    error = d.error or {}
    # The job's own child process died: a strike pinned on it (failed at the third).
    crashed = d.state in ("retry", "failed") and error.get("type") == "ProcessCrashed"
    ok = index.finish(claim.id, claim.attempt, owner, d.state, now=now, result=d.result,
                      error=d.error, run_at=d.run_at, logs=outcome.logs, crashed=crashed)
    if crashed:
        log.warning("job crashed its own process (a strike against it; failed at %d): %s",
                    MAX_CRASHES, error.get("message"),
                    extra={**fields, "error": error.get("type")})
    elif d.state in ("succeeded", "cancelled"):
        log.info("job %s", d.state, extra=fields)
    elif d.state == "snooze":
        log.info("job snoozed for %.1fs", outcome.delay or 0, extra=fields)
    elif d.state == "failed":
        log.warning("job failed: %s", error.get("message"),
                    extra={**fields, "error": error.get("type")})
    else:
        log.info("job will retry in %.1fs: %s", (d.run_at or now) - now,
                 error.get("message"), extra={**fields, "error": error.get("type")})
    if not ok:
        log.warning("stale attempt ignored (the job was taken over)", extra=fields)
    return d, ok


def recorded_success(claim: Claim, ok: bool, metrics: Any) -> None:
    """The log line (and metric) of a success recorded in a batch (Index.succeed_many);
    ``ok`` False: a stale attempt, ignored."""
    if not ok:
        log.warning("stale attempt ignored (the job was taken over)", extra=job_fields(claim))
        return
    if log.isEnabledFor(logging.INFO):
        log.info("job succeeded", extra=job_fields(claim))
    if metrics is not None:
        metrics.job_recorded(claim.task, claim.id, "succeeded")
