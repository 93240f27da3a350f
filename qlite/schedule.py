"""Periodic jobs: cron expressions and fixed intervals, as pure functions of time.

A schedule fires a tick by enqueuing its task with the idempotency key
``schedule:{name}:{tick}``, then recording the tick as the schedule's last in the index with a
conditional UPDATE. Two worker processes (or a restart between the PUT and the UPDATE) can
both try to fire the same tick: the key makes it one job, so each tick runs once.

``misfire`` says what happens to ticks that passed while no worker was running:

- ``latest`` (default): run the most recent missed tick once; drop the older ones.
- ``all``: run every missed tick, oldest first (at most ``CATCH_UP_MAX`` per pass).
- ``skip``: run none of them; a tick counts as missed when it is more than ``GRACE`` seconds
  late.

Only ``cronsim`` is imported, and only when a schedule is built (the producer never needs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from qlite.errors import TaskError

MISFIRE = ("latest", "all", "skip")
CATCH_UP_MAX = 1000
GRACE = 60.0  # seconds: a tick fired later than this is "missed" for misfire="skip"


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    tz: str = "UTC"
    misfire: str = "latest"
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    queue: str = "default"

    @classmethod
    def build(cls, name: str, task: str, cron: str | None, every: Any, tz: str,
              misfire: str, **rest: Any) -> Schedule:
        """Validate and build; every problem is one TaskError naming the value and a fix."""
        where = f"periodic {name!r}"
        if (cron is None) == (every is None):
            raise TaskError(f"{where}: give a cron expression or every=, exactly one. "
                            "Try: @app.periodic('*/5 * * * *') or @app.periodic(every=300)")
        if every is not None:
            seconds = every.total_seconds() if isinstance(every, timedelta) else every
            if not isinstance(seconds, int | float) or not 1 <= seconds <= 366 * 86400:
                raise TaskError(f"{where}: every: expected 1 second to 366 days "
                                f"(got {every!r})")
            every = float(seconds)
        if misfire not in MISFIRE:
            raise TaskError(f"{where}: misfire: expected one of {', '.join(MISFIRE)} "
                            f"(got {misfire!r})")
        _zone(tz, where)
        schedule = cls(name, task, cron, every, tz, misfire, **rest)
        if cron is not None:
            from cronsim import CronSimError

            try:
                schedule.next_after(0.0)
            except (CronSimError, ValueError, KeyError) as e:
                raise TaskError(f"{where}: cron expression {cron!r} is not valid ({e}). Try: "
                                "five fields, minute hour day month weekday, such as "
                                "'*/5 * * * *' or '0 3 * * mon'") from None
        return schedule

    @property
    def spec(self) -> str:
        return self.cron if self.cron is not None else f"every {self.every:g}s"

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t`` (Unix seconds)."""
        if self.every is not None:
            # Aligned to the Unix epoch, so a restart never shifts the ticks.
            return (math.floor(t / self.every) + 1) * self.every
        from cronsim import CronSim

        start = datetime.fromtimestamp(t, _zone(self.tz, self.name))
        return next(CronSim(self.cron or "", start)).timestamp()

    def latest_at_or_before(self, t: float) -> float:
        """The last tick at or before ``t``."""
        if self.every is not None:
            return math.floor(t / self.every) * self.every
        from cronsim import CronSim

        start = datetime.fromtimestamp(t, _zone(self.tz, self.name)) + timedelta(microseconds=1)
        return next(CronSim(self.cron or "", start, reverse=True)).timestamp()

    def due(self, last: float, now: float) -> tuple[list[float], float]:
        """Given the last tick fired and the time now: the ticks to fire now, oldest first,
        and the tick to record as the last one (ticks skipped by the misfire policy count as
        handled)."""
        first = self.next_after(last)
        if first > now:
            return [], last
        latest = self.latest_at_or_before(now)
        if self.misfire == "all":
            ticks: list[float] = []
            t = first
            while t <= now and len(ticks) < CATCH_UP_MAX:
                ticks.append(t)
                t = self.next_after(t)
            return ticks, ticks[-1]
        if self.misfire == "skip" and now - latest > GRACE:
            return [], latest
        return [latest], latest


def _zone(tz: str, where: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise TaskError(f"{where}: unknown time zone {tz!r}. Try: tz='UTC' or an IANA name "
                        "such as 'Europe/Paris'") from None


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of one tick: the same tick is the same job, whoever fires it."""
    from qlite.envelope import now_rfc3339

    return f"schedule:{name}:{now_rfc3339(tick)}"
