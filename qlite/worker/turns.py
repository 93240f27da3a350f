"""Quick jobs: claimed ahead, run in turn, recorded in batches (docs/performance.md).

A no-op job should not cost a SQLite commit and a thread hop of its own. When recent jobs ran
quickly, a claim takes the free slots plus about ``AHEAD_SECONDS`` of work per slot (at most
``AHEAD_MAX`` jobs), every attempt counted in that one commit before any of them runs
(guarantee 2). Each slot's share goes to one handler thread that runs them one after the other
(``run_in_turn``). Plain successes wait up to ``RECORD_WAIT`` (or ``RECORD_MAX`` of them) and
are recorded by one statement (``Index.succeed_many``) in the commit of the next claim;
anything else is recorded one by one, as before (record.py).

A kill re-runs the jobs claimed and not yet recorded: at most the concurrency plus
``AHEAD_MAX`` (docs/guarantees.md). Jobs claimed ahead that will not start here (the worker
stops, or a fleet shard left it) are given back (``Index.unclaim``), their attempts uncounted.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

from qlite.index.rows import JobRow
from qlite.worker.execute import Claim, Outcome

AHEAD_SECONDS = 0.05  # claim at most this much work ahead per slot (by the jobs' run times)
# Jobs claimed ahead at most. A worker death makes every claimed job a suspect (reap), and
# each suspect then runs alone in a child process: this caps that cost at ~AHEAD_MAX runs.
AHEAD_MAX = 32
RECORD_MAX = 64  # finished jobs recorded in one commit at most
RECORD_WAIT = 0.05  # seconds a finished job may wait for its batch to be recorded
# A handler thread's share of quick jobs is at least this much work (by recent run times):
# spreading less over more threads costs more in hops and GIL hand-offs than it gains.
CHUNK_SECONDS = 0.005


def crashed(e: BaseException) -> Outcome:
    """The outcome of a handler that raised past run()'s net (SystemExit & co.)."""
    return Outcome("error", error={"type": type(e).__name__, "message": str(e),
                                   "traceback": "".join(traceback.format_exception(e))})


def run_in_turn(run_one: Callable[[Claim], Outcome], claims: list[Claim],
                stopping: Callable[[], bool]) -> list[Outcome]:
    """On a handler thread: run the claims one after the other (one hop to the thread for
    many quick jobs); stops early when the worker stops (the rest are given back)."""
    outcomes: list[Outcome] = []
    for claim in claims:
        if stopping():
            break
        try:
            outcomes.append(run_one(claim))
        except BaseException as e:  # run() catches Exception; this is SystemExit & co.
            outcomes.append(crashed(e))
    return outcomes


def plain(outcome: Outcome, cancel: threading.Event | None) -> bool:
    """A success with nothing but its result to record: it may join a batch."""
    return (outcome.state == "succeeded" and not outcome.logs and outcome.progress is None
            and not outcome.checkpointed and not (cancel is not None and cancel.is_set()))


class Turns:
    """The loop's queue of claimed jobs not started yet (``ready``), of finished jobs not
    recorded yet (``finished``), and of claimed jobs to give back (``give_back``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ready: deque[JobRow] = deque()  # rows claimed (attempts counted), not started
        self.finished: list[tuple[Claim, Outcome]] = []  # handlers done, not yet recorded
        self.finished_since = 0.0  # when the oldest of them finished
        self.job_seconds = 1.0  # recent handler run time (moving average): how far ahead
        self.give_back: list[tuple[str, int]] = []  # claimed ahead, not to start here now

    def __bool__(self) -> bool:
        """Jobs claimed and not started, or finished and not recorded."""
        return bool(self.ready or self.finished)

    def ahead(self, concurrency: int) -> int:
        """How many jobs to claim beyond the free slots: about AHEAD_SECONDS of work per
        slot, by the recent run times (the caller claims none ahead under per-task limits,
        for a suspect, or with --pool process)."""
        per_slot = int(AHEAD_SECONDS / max(self.job_seconds, 1e-4))
        return min(AHEAD_MAX, per_slot * concurrency)

    def share(self, slots: int) -> int:
        """How many of the ready jobs go to one handler thread: spread over ``slots``, but
        no fewer than CHUNK_SECONDS of work each."""
        spread = -(-len(self.ready) // max(slots, 1))
        return max(spread, math.ceil(CHUNK_SECONDS / max(self.job_seconds, 1e-6)), 1)

    def ran(self, seconds: float, jobs: int) -> None:
        """A slot's jobs took ``seconds`` in all: the moving average of run times."""
        if jobs:
            self.job_seconds += (seconds / jobs - self.job_seconds) * 0.2

    def ended(self, claim: Claim, outcome: Outcome) -> None:
        if not self.finished:
            self.finished_since = self.clock()
        self.finished.append((claim, outcome))

    def record_due(self, *, stopping: bool, blocked: bool) -> bool:
        """Record the finished jobs now? When no claimed job waits (the next claim commits
        them), when stopping or the ready ones may not start (``blocked``), or when the
        batch is full or its oldest has waited RECORD_WAIT."""
        return bool(self.finished) and (
            not self.ready or stopping or blocked or len(self.finished) >= RECORD_MAX
            or self.clock() - self.finished_since >= RECORD_WAIT)

    def left(self, rest: list[tuple[Claim, Outcome]]) -> None:
        """The outcomes that failed to record, for the next step."""
        self.finished = rest
        if rest:
            self.finished_since = self.clock()

    def take_back(self) -> list[tuple[str, int]]:
        jobs, self.give_back = self.give_back, []
        return jobs

    def wait(self) -> float | None:
        """How long the loop may wait before recording the finished jobs (None: no limit)."""
        return RECORD_WAIT if self.finished else None
