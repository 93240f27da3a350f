"""Recording a finished attempt in the index: the decision (outcome.py, pure), then one
fenced statement (Index.finish: id + attempt + owner), then the log line that says what
happened. A stale attempt (the job was reaped and claimed again) changes nothing. The loop's
Recorder records a step's finished jobs: plain successes in one statement, the rest one by
one."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from qlite.app import App
from qlite.index.db import MAX_CRASHES, Index
from qlite.states import WAITING
from qlite.worker.cancels import Cancels
from qlite.worker.execute import Claim, Outcome
from qlite.worker.faults import crash_point
from qlite.worker.liveness import disk_full
from qlite.worker.logs import job_fields
from qlite.worker.outcome import Decision, decide
from qlite.worker.publish import Publisher
from qlite.worker.turns import plain

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


class Recorder:
    """The loop's recording of finished jobs: plain successes in one statement
    (Index.succeed_many, turns.py), the others one by one (``record``). An outcome that fails
    to record stays for the next step; at the third failure it is recorded as a plain failure,
    so one outcome never blocks the others for good. Each job recorded goes to ``done``."""

    def __init__(self, index: Index, app: App, publisher: Publisher, cancels: Cancels, *,
                 owner: str, clock: Callable[[], float], rng: random.Random,
                 done: Callable[[Claim], None]):
        self.index = index
        self.app = app
        self.publisher = publisher
        self.cancels = cancels
        self.owner = owner
        self.clock = clock
        self.rng = rng
        self.done = done
        self.metrics: Any = None  # metrics.Metrics when --metrics-port is set
        self.failures: dict[str, int] = {}  # job id -> failed attempts to record it

    def run(self, finished: list[tuple[Claim, Outcome]], packed: set[str]
            ) -> list[tuple[Claim, Outcome]]:
        """Record ``finished`` (``packed``: the ids that came in a pack); returns the outcomes
        left for the next step."""
        batch = [(c, o) for c, o in finished if plain(o, self.cancels.events.get(c.id))]
        if batch:
            try:
                recorded = self.index.succeed_many([(c.id, c.attempt, o.result or "null")
                                                    for c, o in batch],
                                                   self.owner, self.clock())
            except Exception as e:  # each is tried alone below, with the usual fallbacks
                log.warning("recording %d finished job(s) failed (%s: %s); one by one now",
                            len(batch), type(e).__name__, e)
            else:
                for claim, _ in batch:
                    recorded_success(claim, claim.id in recorded, self.metrics)
                    self._done(claim)
                ids = {c.id for c, _ in batch}
                finished = [(c, o) for c, o in finished if c.id not in ids]
        return [(c, o) for c, o in finished if not self._one(c, o, packed)]

    def _done(self, claim: Claim) -> None:
        crash_point("after_record")
        self.failures.pop(claim.id, None)
        self.done(claim)

    def _one(self, claim: Claim, outcome: Outcome, packed: set[str]) -> bool:
        """Record one outcome; False to try again next step."""
        try:
            self._record(claim, outcome, packed)
        except Exception as e:
            tries = self.failures[claim.id] = self.failures.get(claim.id, 0) + 1
            if disk_full(e) or tries < 3:
                if not disk_full(e):
                    log.warning("recording the job failed (%s: %s); trying again",
                                type(e).__name__, e, extra=job_fields(claim))
                return False  # the outcome stays in memory; the next step records it
            log.error("recording the job failed: %s: %s", type(e).__name__, e,
                      extra=job_fields(claim))
            try:
                self.index.finish(claim.id, claim.attempt, self.owner, "failed",
                                  now=self.clock(), error={
                                      "type": "RecordError", "traceback": None,
                                      "message": "the outcome could not be recorded: "
                                                 f"{type(e).__name__}"})
            except Exception as again:
                log.warning("recording the job as failed failed too: %s: %s",
                            type(again).__name__, again, extra=job_fields(claim))
        self._done(claim)
        return True

    def _record(self, claim: Claim, outcome: Outcome, packed: set[str]) -> None:
        if outcome.checkpointed and outcome.state == "succeeded":
            self.publisher.checkpoints.add(claim.id)  # deleted with its inbox object
        task = self.app.tasks.get(claim.task)
        d, ok = record(self.index, claim, outcome, owner=self.owner,
                       backoff=task.backoff if task else 1.0,
                       cancelled=self.cancels.requested(claim.id), now=self.clock(),
                       rng=self.rng)
        if ok and d.state in ("retry", "snooze") and claim.envelope.get("record_start") and (
                claim.id not in packed):
            job = self.index.get(claim.id)  # its record says it waits for the next attempt
            if job is not None and job.state in WAITING:
                self.publisher.interim(job)
        if ok and self.metrics is not None:
            self.metrics.job_recorded(claim.task, claim.id, d.label)
