"""The retry policy is a pure function of (attempt, now, rng)."""

import random

from hypothesis import given
from hypothesis import strategies as st

from qlite.worker.retry import RetryPolicy


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    policy = RetryPolicy(max_attempts=20, base=1.0, cap=60.0)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 10)]
    assert 0.5 <= delays[0] <= 1.0
    assert 2.0 <= delays[2] <= 4.0
    assert all(30.0 <= d <= 60.0 for d in delays[6:])


def test_no_retry_once_attempts_are_spent():
    policy = RetryPolicy(max_attempts=3)
    assert policy.next_run(2, now=100.0, rng=random.Random(1)) > 100.0
    assert policy.next_run(3, now=100.0) is None


@given(attempt=st.integers(1, 50), base=st.floats(0.01, 10), cap=st.floats(1, 1000),
       seed=st.integers())
def test_delay_is_always_within_half_and_all_of_the_capped_exponential(attempt, base, cap, seed):
    policy = RetryPolicy(max_attempts=100, base=base, cap=cap)
    ceiling = min(base * 2 ** (attempt - 1), cap)
    assert ceiling / 2 - 1e-9 <= policy.delay(attempt, random.Random(seed)) <= ceiling + 1e-9
