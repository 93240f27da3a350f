"""Retry policy as pure functions of (attempt, now, rng), built on tenacity's wait strategies.

After attempt ``n`` fails, the job runs again after a delay drawn between half and all of
tenacity's ``wait_exponential(multiplier=base, max=cap)`` for ``n`` ("equal jitter": always
some back-off, never a thundering herd), unless ``n`` reached ``max_attempts``. A task may pass
any tenacity wait strategy instead (``backoff=tenacity.wait_random_exponential(max=60)``), and a
handler may name the delay itself (``raise qlite.Retry(after=30)``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, wait_exponential


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base: float | Callable[[Any], float] = 1.0  # seconds, or a tenacity wait strategy
    cap: float = 300.0  # no computed back-off is longer than this

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        state = RetryCallState(retry_object=None, fn=None, args=(),  # type: ignore[arg-type]
                               kwargs={})
        state.attempt_number = attempt
        if callable(self.base):
            return min(float(self.base(state)), self.cap)
        ceiling = wait_exponential(multiplier=self.base, max=self.cap)(state)
        return (rng or random).uniform(ceiling / 2, ceiling)

    def next_run(self, attempt: int, now: float, rng: random.Random | None = None,
                 after: float | None = None) -> float | None:
        """When to run again after failed attempt ``attempt``, or None: out of attempts.
        ``after`` (from ``qlite.Retry``) replaces the computed back-off."""
        if attempt >= self.max_attempts:
            return None
        return now + (after if after is not None else self.delay(attempt, rng))


def retryable(exc: BaseException, retry_on: tuple[type, ...],
              give_up_on: tuple[type, ...]) -> bool:
    """Whether a handler's exception earns another attempt."""
    return isinstance(exc, retry_on) and not isinstance(exc, give_up_on)
