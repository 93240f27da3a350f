"""When the worker LISTs its inbox, and how long its loop may wait: the idle back-off, and the
doorbell (qlite/doorbell.py) it sleeps on once idle.

Awake, while jobs arrive, the next LIST comes after about ``PER_LIST`` new inbox objects at the
rate they have been arriving (a moving average), between ``POLL_FAST`` and QLITE_POLL_MIN: the
faster they come, the sooner each is seen, at one LIST per ``PER_LIST`` jobs or fewer. An empty
LIST doubles the interval up to QLITE_POLL_MAX. After ``doorbell.QUIET_POLLS`` empty LISTs in a
row, and as long without a new job as those take backing off from QLITE_POLL_MIN (1.5 s), an
idle worker writes ``asleep`` to the bell, LISTs once more ``doorbell.CACHE`` + a margin later,
then asks the bell every ``doorbell.EVERY`` seconds and LISTs only every ``safety`` seconds. A
ring, a job found, or the loop starting a job wakes it (docs/costs.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from qlite import doorbell
from qlite.settings import Settings

if TYPE_CHECKING:
    from qlite.worker.fleet import Fleet

log = logging.getLogger(__name__)

# While jobs keep arriving, LIST about once per PER_LIST new inbox objects (a single job, or a
# pack), at least every QLITE_POLL_MIN and at most every POLL_FAST seconds: at 50 jobs/s every
# 0.32 s, at 100 jobs/s every 0.16 s. A LIST per 16 single puts is 0.06 requests per job; with
# a DeleteObjects and a read of the bell by the producer once a second, a single put costs
# about 3.1 requests at 50 jobs/s (docs/costs.md). Sooner would cost more than 3.1.
PER_LIST = 16
# A job read from its inline key (QLITE_INLINE) needs no GET: its two requests (the put, the
# result) leave room for a LIST per 4 of them, at most every POLL_FAST: at 50 jobs/s 0.2 LISTs
# a job, $0.3 per million jobs more than the GET and LIST share it replaces, at 100 jobs/s
# $0.2 less (docs/costs.md#inline-keys).
PER_LIST_INLINE = 4
POLL_FAST = 0.1
ARRIVALS_TAU = 1.0  # seconds: the time constant of the arrival rate's moving average


class Pacer:
    """Answers the loop's questions: poll now (``due``)? how long may I wait (``wait``)? It is
    told what a LIST found (``polled``) and when a job starts (``wake``)."""

    def __init__(self, settings: Settings, store: Any, clock: Callable[[], float]):
        self.poll_min = settings.poll_min
        self.poll_max = settings.poll_max
        self.clock = clock
        self.poll_every = settings.poll_min
        self.next_poll = 0.0
        self.arrivals = 0.0  # new inbox objects per second, a moving average over the LISTs
        self.inline = 0.0  # of those, jobs read from their inline key alone (no GET)
        self.listed_at: float | None = None
        self.found_at = float("-inf")  # the last LIST that found something
        # Quiet means as long without a new job as two empty LISTs take when backing off from
        # QLITE_POLL_MIN (0.5 s + 1 s), however fast the LISTs came while jobs arrived.
        self.quiet_for = 3 * settings.poll_min
        # QLITE_DOORBELL: once idle, sleep on a GET of coord/doorbell.json
        # (not when QLITE_POLL_MAX is shorter than the bell's interval: the LISTs are faster)
        self.sleeper = doorbell.Sleeper(store) \
            if settings.doorbell == "on" and settings.poll_max > doorbell.EVERY else None
        self.safety = doorbell.SAFETY  # seconds between inbox LISTs while asleep
        self.quiet_polls = 0  # empty inbox LISTs in a row
        self.next_bell = 0.0
        self.fleet: Fleet | None = None  # told when this worker sleeps or wakes (renewals)

    @property
    def asleep(self) -> bool:
        return self.sleeper is not None and self.sleeper.asleep

    def due(self, burst: bool, quiet: Callable[[], bool]) -> bool:
        """LIST the inbox now? Asleep, only on a ring of the bell or at the safety LIST; with
        --burst, at once whenever nothing runs or is runnable (``quiet``)."""
        if self.asleep and self.clock() < self.next_poll and not burst:
            if not self.rung():
                return False
        return not (self.clock() < self.next_poll and not (burst and quiet()))

    def poll_now(self) -> None:
        """LIST at the next step rather than after the idle back-off (new shards, a tick)."""
        self.next_poll = 0.0

    def polled(self, taken: int, *, more: bool, burst: bool,
               may_sleep: Callable[[], bool], inline: int = 0) -> None:
        """A LIST is done: it found ``taken`` new inbox objects (jobs, packs, objects to
        quarantine; ``inline`` of them read from their key) and there are ``more`` pages to
        read (no back-off: at the arrival rate, or QLITE_POLL_MIN mid-sweep), or nothing (back
        off; once quiet for long enough and ``may_sleep``, fall asleep on the bell)."""
        self._note_arrivals(taken, inline)
        if taken or more:
            self.poll_every = self.poll_min if more else self._busy_every()
            self.quiet_polls = 0
            self.found_at = self.clock()
            self.wake()
        else:
            self.quiet_polls += 1
            self.poll_every = min(self.poll_every * 2, self.poll_max)
            if self.asleep:
                self.poll_every = self.safety
            elif (self.sleeper is not None and not burst
                  and self.quiet_polls >= doorbell.QUIET_POLLS
                  and self.clock() - self.found_at >= self.quiet_for
                  and self._may_sleep(may_sleep) and self.sleeper.sleep()):
                self._fell_asleep()
                # One more LIST once every producer's cached "awake" read is older than our
                # write: a put after that LIST reads "asleep" and rings.
                self.poll_every = doorbell.CACHE + 0.25
        self.next_poll = self.clock() + self.poll_every

    def _note_arrivals(self, taken: int, inline: int = 0) -> None:
        """Fold this LIST's new objects into the arrival rate: a moving average whose weight
        is the time since the last LIST (``ARRIVALS_TAU``), however often the LISTs come."""
        now = self.clock()
        if self.listed_at is not None:
            elapsed = max(now - self.listed_at, 0.01)
            weight = 1.0 - math.exp(-elapsed / ARRIVALS_TAU)
            self.arrivals += (taken / elapsed - self.arrivals) * weight
            self.inline += (inline / elapsed - self.inline) * weight
        self.listed_at = now

    def _busy_every(self) -> float:
        """The next LIST while jobs arrive: after about PER_LIST more at the current rate
        (PER_LIST_INLINE when they come with inline keys, in proportion)."""
        arrivals = max(self.arrivals, 1e-3)
        share = min(self.inline / arrivals, 1.0)
        every = (PER_LIST - (PER_LIST - PER_LIST_INLINE) * share) / arrivals
        return min(self.poll_min, max(POLL_FAST, every))

    def wait(self, now: float, *, burst: bool, due: Iterable[float | None] = (),
             outage: float = 0.0, beat_at: float, publish_at: float) -> float:
        """Seconds the loop may wait before its next step: until the next LIST (or question to
        the bell), the first of ``due`` (a job runnable, a schedule firing), no shorter than
        the ``outage`` back-off, and never past the next maintenance pass, the next publish
        or a second (signals are flags: the loop notices them within one)."""
        wait = self.next_poll - now if not burst else 0.05
        if self.asleep:
            wait = min(wait, self.next_bell - now)
        for at in due:
            if at is not None:
                wait = min(wait, at - now)
        wait = min(max(wait, outage, 0.01), beat_at - now, 1.0, max(publish_at - now, 0.01))
        return max(wait, 0.0)

    def _may_sleep(self, idle: Callable[[], bool]) -> bool:
        """The loop is idle and the fleet is settled (a sleeping member renews rarely, so it
        must not be in the middle of a rebalance)."""
        return idle() and (self.fleet is None or self.fleet.settled())

    def _fell_asleep(self) -> None:
        log.debug("idle: sleeping on the doorbell %s", doorbell.KEY)
        self.next_bell = self.clock() + doorbell.EVERY
        if self.fleet is not None:
            self.fleet.set_asleep(True)

    def rung(self) -> bool:
        """Ask the bell (at most every doorbell.EVERY seconds); True when it rang: then the
        worker is awake again and LISTs now."""
        now = self.clock()
        if now < self.next_bell:
            return False
        # A fixed rate, not "EVERY after the last answer": the cost stays what docs/costs.md says.
        self.next_bell = max(self.next_bell + doorbell.EVERY, now)
        assert self.sleeper is not None
        if not self.sleeper.rung():
            return False
        log.debug("the doorbell rang: awake")
        self.wake()
        return True

    def wake(self) -> None:
        """Awake again (a ring, jobs found, a job started): LIST at the next step."""
        if not self.asleep:
            return
        assert self.sleeper is not None
        self.sleeper.wake()
        self.poll_every = self.poll_min
        self.next_poll = 0.0
        self.quiet_polls = 0
        if self.fleet is not None:
            self.fleet.set_asleep(False)
