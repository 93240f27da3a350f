"""Retry policy as pure functions of (attempt, now, rng), built on tenacity's wait strategies.

After attempt ``n`` fails, the job runs again after a delay drawn between half and all of
tenacity's ``wait_exponential(multiplier=base, max=cap)`` for ``n`` ("equal jitter": always
some back-off, never a thundering herd), unless ``n`` reached ``max_attempts``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base: float = 1.0  # seconds before the second attempt (upper bound of the draw)
    cap: float = 300.0  # no back-off is longer than this

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        ceiling = wait_exponential(multiplier=self.base, max=self.cap)(state)
        return (rng or random).uniform(ceiling / 2, ceiling)

    def next_run(self, attempt: int, now: float, rng: random.Random | None = None) -> float | None:
        """When to run again after failed attempt ``attempt``, or None: out of attempts."""
        if attempt >= self.max_attempts:
            return None
        return now + self.delay(attempt, rng)
