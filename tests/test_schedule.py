"""Schedules as pure functions of time: no server, no sleeping."""

from datetime import UTC, datetime, timedelta

import pytest

import qlite
from qlite.schedule import CATCH_UP_MAX, GRACE, Schedule, tick_key


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def every(seconds, misfire="latest"):
    return Schedule.build("s", "s", None, seconds, "UTC", misfire)


def cron(expr, tz="UTC", misfire="latest"):
    return Schedule.build("s", "s", expr, None, tz, misfire)


def test_interval_ticks_are_aligned_to_the_epoch_so_a_restart_never_shifts_them():
    s = every(300)
    assert s.next_after(ts("2026-11-25T10:02:17+00:00")) == ts("2026-11-25T10:05:00+00:00")
    assert s.next_after(ts("2026-11-25T10:05:00+00:00")) == ts("2026-11-25T10:10:00+00:00")
    assert every(timedelta(hours=1)).every == 3600


def test_cron_is_evaluated_in_its_time_zone():
    s = cron("0 9 * * mon-fri", tz="Europe/Paris")
    after = s.next_after(ts("2026-11-27T12:00:00+00:00"))  # a Friday
    assert after == ts("2026-11-30T09:00:00+01:00")  # Monday 09:00 in Paris is 08:00 UTC


def test_a_daily_cron_fires_once_on_each_day_across_both_dst_changes():
    s = cron("30 2 * * *", tz="Europe/Paris")
    for start in ("2026-03-27T00:00:00+00:00", "2026-10-23T00:00:00+00:00"):
        t, ticks = ts(start), []
        for _ in range(4):
            t = s.next_after(t)
            ticks.append(t)
        days = [datetime.fromtimestamp(x, UTC).date() for x in ticks]
        assert len(set(days)) == 4 and ticks == sorted(ticks)


def test_on_time_every_policy_fires_the_one_due_tick():
    for misfire in ("latest", "all", "skip"):
        s = every(60, misfire)
        last = ts("2026-11-25T10:00:00+00:00")
        assert s.due(last, last + 59) == ([], last)
        assert s.due(last, last + 61) == ([last + 60], last + 60)


def test_missed_ticks_follow_the_misfire_policy():
    last = ts("2026-11-25T10:00:00+00:00")
    now = last + 10 * 60 + 5  # ten ticks passed while no worker ran
    assert every(60, "latest").due(last, now) == ([last + 600], last + 600)
    ticks, new_last = every(60, "all").due(last, now)
    assert ticks == [last + 60 * i for i in range(1, 11)] and new_last == last + 600
    assert every(60, "skip").due(last, now) == ([last + 600], last + 600)  # 5 s late: on time
    late = last + 3600 + GRACE + 1  # the only tick that passed is over a minute late
    assert every(3600, "skip").due(last, late) == ([], last + 3600)


def test_catching_up_is_bounded_per_pass():
    ticks, new_last = every(1, "all").due(0.0, 10 * CATCH_UP_MAX)
    assert len(ticks) == CATCH_UP_MAX and new_last == ticks[-1] == CATCH_UP_MAX


def test_a_tick_has_one_key_whoever_fires_it():
    assert tick_key("reports.daily", 0.0) == "schedule:reports.daily:1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize("kwargs, message", [
    ({"cron": "61 * * * *"}, "cron expression '61 * * * *' is not valid"),
    ({"cron": "every day"}, "is not valid"),
    ({}, "give a cron expression or every=, exactly one"),
    ({"cron": "* * * * *", "every": 60}, "exactly one"),
    ({"every": 0}, "every: expected 1 second to 366 days"),
    ({"every": "5m"}, "every: expected 1 second"),
    ({"every": 60, "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"every": 60, "misfire": "sometimes"}, "misfire: expected one of latest, all, skip"),
])
def test_a_bad_schedule_is_refused_at_registration_with_the_fix(kwargs, message):
    app = qlite.App()
    cron_expr = kwargs.pop("cron", None)
    with pytest.raises(qlite.TaskError, match=message.replace("*", r"\*")):
        app.periodic(cron_expr, name="p.bad", **kwargs)(lambda: None)
    assert "p.bad" not in app.tasks and not app.schedules  # nothing half-registered


def test_a_periodic_task_is_also_a_plain_task():
    app = qlite.App()

    @app.periodic("*/5 * * * *", name="p.five", queue="cron", max_attempts=2)
    def five():
        return 5

    assert five() == 5
    assert app.tasks["p.five"].max_attempts == 2
    assert app.schedules["p.five"].queue == "cron" and "cron" in app.queues
