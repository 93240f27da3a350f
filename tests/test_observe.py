"""qlite stats, qlite top and --json on the read commands, against real workers and servers."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT, NotYet, eventually, qlite
from qlite.index.db import Index
from qlite.ops.stats import PRICE_PER_1000, cost, percentile, series, stats


def run_jobs(target, ok: int = 5, failing: int = 2) -> tuple[list[str], list[str]]:
    """Enqueue ``ok`` math.add and ``failing`` test.always_fail jobs and run burst workers
    (real processes) until every one is terminal."""
    import qlite as q

    client = q.Client()
    good = [client.put("math.add", [i, i]).id for i in range(ok)]
    bad = [client.put("test.always_fail").id for _ in range(failing)]
    def finished() -> bool:
        worker = qlite("worker", "--app", "testapp:app", "--burst", env=target.env)
        assert worker.returncode == 0, worker.stderr
        states = [client.status(i)["state"] for i in good + bad]
        return all(s in ("succeeded", "failed") for s in states) or NotYet(states)

    eventually(finished, 90, "every job finished")
    return good, bad


def test_stats_counts_states_throughput_latency_failures_and_s3_cost(s3):
    good, bad = run_jobs(s3)
    out = qlite("stats", "--json", env=s3.env)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["states"]["succeeded"] == len(good) and s["states"]["failed"] == len(bad)
    assert s["queues"]["default"]["succeeded"] == len(good)
    assert s["finished"] == {"succeeded": len(good), "failed": len(bad), "cancelled": 0}
    assert s["throughput_per_minute"] == pytest.approx((len(good) + len(bad)) / 60, abs=1e-3)
    assert s["failure_rate"] == pytest.approx(len(bad) / (len(good) + len(bad)), abs=1e-3)
    # Every job started once; the failing ones ran twice (max_attempts=2).
    assert s["wait"]["n"] == len(good) + len(bad)
    assert s["run"]["n"] == len(good) + 2 * len(bad)
    assert 0 <= s["wait"]["p50"] <= s["wait"]["p95"] < 90
    assert 0 <= s["run"]["p50"] <= s["run"]["p95"] < 90
    assert s["tasks"]["test.always_fail"]["failure_rate"] == 1.0
    assert s["tasks"]["math.add"]["finished"]["succeeded"] == len(good)
    assert s["oldest_waiting_seconds"] is None  # nothing left to run

    c = s["s3"]
    assert c["jobs"] == len(good) + len(bad)
    # At least a result PUT per job; the inbox was LISTed and its objects deleted.
    assert c["requests"]["put"] >= c["jobs"] and c["requests"]["list"] >= 1
    assert c["requests"]["delete"] >= 1
    assert c["requests_per_job"] == pytest.approx(sum(c["requests"].values()) / c["jobs"])
    assert c["dollars_per_million_jobs"] > 1_000_000 * 0.005 / 1000  # > one PUT per job

    text = qlite("stats", "--since", "15m", env=s3.env)
    assert text.returncode == 0, text.stderr
    assert f"{len(good) + len(bad)} finished ({len(good)} succeeded, {len(bad)} failed" \
        in text.stdout
    assert "per million jobs at AWS list prices" in text.stdout
    assert "task test.always_fail" in text.stdout


def test_stats_window_leaves_out_jobs_finished_before_it(s3):
    run_jobs(s3, ok=2, failing=0)
    index = Index(s3.db, readonly=True)
    later = stats(index, since=60, now=time.time() + 3600)
    assert later["finished"]["succeeded"] == 0 and later["states"]["succeeded"] == 2
    assert later["wait"]["p50"] is None and later["throughput_per_minute"] == 0


def test_series_puts_each_job_in_the_bucket_of_its_time(s3):
    good, bad = run_jobs(s3, ok=3, failing=1)
    index = Index(s3.db, readonly=True)
    now = time.time()
    s = series(index, since=600, buckets=10, now=now)
    assert s["bucket_seconds"] == 60 and set(s["tasks"]) == {"math.add", "test.always_fail"}
    add = s["tasks"]["math.add"]
    assert len(add) == 10 and sum(b["finished"] for b in add) == len(good)
    last = add[-1]  # everything finished within the last minute
    assert last["finished"] == len(good) and last["per_minute"] == len(good)
    assert last["run_p50"] is not None and last["wait_p95"] >= last["wait_p50"] >= 0
    assert s["tasks"]["test.always_fail"][-1]["failed"] == len(bad)
    # An hour later the same jobs are out of a ten-minute window.
    assert series(index, since=600, buckets=10, now=now + 3600)["tasks"] == {}


def test_cost_prices_requests_at_aws_list_prices():
    counters = {"s3.put": {"value": 200, "since": "2026-11-26T00:00:00.000Z"},
                "s3.get": {"value": 100, "since": "2026-11-26T00:00:00.000Z"},
                "s3.delete": {"value": 50, "since": "2026-11-26T00:00:00.000Z"},
                "jobs.published": {"value": 100, "since": "2026-11-25T00:00:00.000Z"}}
    c = cost(counters)
    assert c["requests_per_job"] == 3.5
    # Two PUTs and one GET per job; DELETE is free: per million jobs 2,000,000 PUTs at
    # $0.005/1000 plus 1,000,000 GETs at $0.0004/1000.
    assert c["dollars_per_million_jobs"] == pytest.approx(10 + 0.4)
    assert c["dollars_per_million_jobs_with_enqueue"] == pytest.approx(10 + 0.4 + 5)
    assert c["since"] == "2026-11-25T00:00:00.000Z"
    assert cost({})["dollars_per_million_jobs"] is None
    assert PRICE_PER_1000["delete"] == 0


def test_percentile_is_the_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95)) == (50.0, 95.0)


def test_stats_reads_an_index_written_before_counters_existed(tmp_path):
    path = tmp_path / "old.db"
    Index(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE counters")
    conn.commit()
    conn.close()
    s = stats(Index(path, readonly=True))
    assert s["s3"]["jobs"] == 0 and s["states"]["queued"] == 0


def test_stats_without_an_index_and_with_a_bad_window_say_what_to_do(s3, tmp_path):
    missing = qlite("stats", "--db", str(tmp_path / "none.db"), env=s3.env)
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: no index at") and "Try:" in missing.stderr
    run_jobs(s3, ok=1, failing=0)
    bad = qlite("stats", "--since", "soon", env=s3.env)
    assert bad.returncode == 1 and "--since: expected an age" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_top_once_prints_queues_tasks_and_the_latest_failures(s3):
    good, bad = run_jobs(s3, ok=3, failing=1)
    out = qlite("top", "--once", env=s3.env)
    assert out.returncode == 0, out.stderr
    assert "qlite top" in out.stdout and "queues" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("│ default "))
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells == ["default", "0", "0", "0", "3", "1", "0", "-"], row
    assert "math.add" in out.stdout and "test.always_fail" in out.stdout
    assert bad[0] in out.stdout and "ValueError: boom" in out.stdout
    assert "per million jobs" in out.stdout


def test_top_redraws_every_second_until_ctrl_c(s3):
    run_jobs(s3, ok=1, failing=0)
    primary, secondary = pty.openpty()  # a terminal, so rich draws live frames
    proc = subprocess.Popen([sys.executable, "-m", "qlite", "top"], env={
        **s3.env, "COLUMNS": "160", "LINES": "50"}, stdin=secondary, stdout=secondary,
        stderr=secondary, cwd=ROOT)
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + 30
    while output.count(b"qlite top") < 3 and time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            output += os.read(primary, 65536)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    os.close(primary)
    assert output.count(b"qlite top") >= 3, output  # the first frame and two redraws
    assert b"Traceback" not in output


def test_every_read_command_prints_json_with_json(s3):
    good, bad = run_jobs(s3, ok=1, failing=1)
    commands = [("status", good[0]), ("wait", good[0], "--timeout", "10"), ("ls",),
                ("show", bad[0]), ("stats",), ("schedules", "--app", "testapp:app")]
    for args in commands:
        out = qlite(*args, "--json", env=s3.env)
        assert out.returncode == 0, (args, out.stderr)
        value = json.loads(out.stdout)
        assert value or value == [], args
    assert json.loads(qlite("show", bad[0], "--json", env=s3.env).stdout)["attempt_log"][0][
        "traceback"].startswith("Traceback")
