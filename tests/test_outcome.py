"""The state decision after an attempt: a pure function, tested without S3 or SQLite."""

import random

from qlite.worker.execute import Outcome
from qlite.worker.outcome import decide

ERROR = {"type": "ValueError", "message": "boom", "traceback": None}


def decision(outcome, *, attempt=1, max_attempts=3, cancelled=False, now=1000.0):
    return decide(outcome, attempt=attempt, max_attempts=max_attempts, backoff=1.0,
                  cancelled=cancelled, now=now, rng=random.Random(7))


def test_a_success_is_final_and_keeps_its_result():
    d = decision(Outcome("succeeded", result="[3]"))
    assert (d.state, d.result, d.error, d.run_at) == ("succeeded", "[3]", None, None)


def test_an_error_with_attempts_left_retries_after_a_backoff():
    d = decision(Outcome("error", error=ERROR), attempt=1)
    assert d.state == "retry" and d.error == ERROR
    assert 1000.5 <= d.run_at <= 1001.0  # equal jitter: between half and all of 1 s


def test_an_error_on_the_last_attempt_fails_the_job():
    d = decision(Outcome("error", error=ERROR), attempt=3, max_attempts=3)
    assert (d.state, d.run_at) == ("failed", None)


def test_a_handler_that_says_failed_is_not_retried():
    assert decision(Outcome("failed", error=ERROR), attempt=1).state == "failed"


def test_a_delay_named_by_the_handler_replaces_the_backoff():
    assert decision(Outcome("error", error=ERROR, delay=30)).run_at == 1030.0


def test_a_snooze_runs_again_after_its_delay():
    d = decision(Outcome("snooze", delay=5))
    assert (d.state, d.run_at, d.label) == ("snooze", 1005.0, "snoozed")


def test_a_cancel_requested_while_running_wins_over_the_error():
    d = decision(Outcome("error", error=ERROR), attempt=2, cancelled=True)
    assert d.state == "cancelled" and d.error["type"] == "Cancelled"
    assert "attempt 2" in d.error["message"]


def test_a_success_stands_even_when_a_cancel_came_late():
    assert decision(Outcome("succeeded", result="1"), cancelled=True).state == "succeeded"
