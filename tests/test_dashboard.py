"""qlite dashboard in a real headless browser (Debian's Chromium driven by Playwright): what
the page renders, from an index filled by real jobs, and retry through the page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_observe import run_jobs

from conftest import ROOT, bucket_keys, eventually, qlite

OUTPUT = ROOT / "tests" / "output"
TOKEN = "t0k3n-for-the-dashboard-test"
XSS = ['<img src=x onerror="window.pwned=1">', "<script>window.pwned=2</script>"]


class Dashboard:
    def __init__(self, target, env_extra: dict | None = None):
        env = {**target.env, **(env_extra or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "qlite", "dashboard", "--port", "0"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        assert "qlite dashboard on http://127.0.0.1:" in line, line + self.proc.stderr.read()
        self.url = line.split(" on ", 1)[1].split()[0]

    def post(self, path: str, headers: dict | None = None) -> int:
        req = urllib.request.Request(self.url + path, data=b"", method="POST",
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def dashboards():
    started: list[Dashboard] = []

    def start(target, **env):
        started.append(Dashboard(target, env))
        return started[-1]

    yield start
    for d in started:
        d.close()


def screenshot(page, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_dashboard_renders_queues_charts_and_a_failed_jobs_traceback(s3, dashboards, page):
    from playwright.sync_api import expect

    import qlite as q

    hostile = q.Client().put("math.add", XSS).id
    good, bad = run_jobs(s3, ok=4, failing=2)
    board = dashboards(s3)
    page.goto(board.url)

    cell = '#queues td[data-queue="default"][data-state="{}"]'
    expect(page.locator(cell.format("succeeded"))).to_have_text(str(len(good) + 1))
    expect(page.locator(cell.format("failed"))).to_have_text(str(len(bad)))
    expect(page.locator(".kpi.failed .v")).to_have_text(str(len(bad)))
    expect(page.locator("#mode")).to_have_text("read-only")

    # Charts: bars of finished jobs with a height, run-time points on the latency plot.
    chart = page.locator('.chart[data-task="math.add"]')
    expect(chart).to_be_visible()
    bars = chart.locator("svg.throughput rect.bar.ok")
    expect(bars.first).to_be_visible()
    assert bars.first.bounding_box()["height"] > 1
    for plot in ("run", "wait"):
        assert chart.locator(f"svg.{plot} circle.dot.p50").count() >= 1
        assert chart.locator(f"svg.{plot} polyline.p95").get_attribute("points").strip()
        assert chart.locator(f"svg.{plot}").bounding_box()["height"] > 50
    failing = page.locator('.chart[data-task="test.always_fail"] svg.throughput rect.bar.bad')
    assert failing.first.bounding_box()["height"] > 1

    # A failed job: click it, its traceback shows.
    page.locator(f'#failed tr.job[data-id="{bad[0]}"]').click()
    traceback = page.locator("#detail pre.tb").first
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("ValueError: boom")
    expect(page.locator("#detail .attempt")).to_have_count(2)
    # Read-only: no buttons, and the API refuses writes with or without a token.
    expect(page.locator("#detail button")).to_have_count(0)
    shot = screenshot(page, f"failed-{s3.name}")
    assert shot.stat().st_size > 10_000
    assert board.post(f"api/jobs/{bad[0]}/retry") == 403
    assert board.post(f"api/jobs/{bad[0]}/retry", {"X-Qlite-Token": TOKEN}) == 403

    # Job arguments are shown as text, never run as HTML.
    page.locator(f'#recent tr.job[data-id="{hostile}"]').click()
    expect(page.locator("#detail pre.args")).to_contain_text(json.dumps(XSS[0]))
    expect(page.locator("#detail pre.result")).to_contain_text("<script>window.pwned=2")
    assert page.locator("#detail img, #detail script").count() == 0
    assert page.evaluate("window.pwned") is None


def test_dashboard_refuses_other_hosts_and_bad_input(s3, dashboards):
    run_jobs(s3, ok=1, failing=0)
    board = dashboards(s3)
    # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing.
    req = urllib.request.Request(board.url + "api/overview", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 421
    with urllib.request.urlopen(board.url + "api/jobs?state=failed", timeout=10) as resp:
        assert json.loads(resp.read()) == []
        assert "script-src 'nonce-" in resp.headers["Content-Security-Policy"]
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(board.url + "api/jobs?state=lost", timeout=10)
    assert bad.value.code == 400 and "expected one of" in json.loads(bad.value.read())["error"]


def test_dashboard_with_a_token_retries_a_failed_job_from_the_page(s3, dashboards, page):
    from playwright.sync_api import expect

    import qlite as q

    later = q.Client().put("math.add", [1, 2], delay=3600).id
    _, bad = run_jobs(s3, ok=1, failing=1)
    board = dashboards(s3, QLITE_DASHBOARD_TOKEN=TOKEN)
    assert board.post(f"api/jobs/{bad[0]}/retry", {"X-Qlite-Token": "wrong" * 5}) == 403
    assert board.post(f"api/jobs/{bad[0]}/retry") == 403

    page.goto(board.url + "#token=" + TOKEN)
    expect(page.locator("#mode")).to_have_text("retry/cancel allowed")
    assert TOKEN not in page.url  # taken out of the address bar
    page.locator(f'#failed tr.job[data-id="{bad[0]}"]').click()
    page.locator("#detail button.retry").click()
    expect(page.locator("#action-msg")).to_contain_text("retry requested (was failed)")
    # The answer stays through the page's periodic refreshes (it used to vanish at the next
    # one, 2 s at most, which a loaded machine's first look could miss): wait for two more
    # reads of the job, the first of which has been rendered by the time the second answers.
    for _ in range(2):
        with page.expect_response(lambda r: r.url.endswith(f"/api/jobs/{bad[0]}")):
            pass
    expect(page.locator("#action-msg")).to_contain_text("retry requested (was failed)")

    # The marker reached the bucket; the worker applies it and runs the job again.
    assert any(k.startswith(f"inbox/default/{bad[0]}.retry.") for k in bucket_keys(s3, "inbox/"))
    client = q.Client()

    def failed_again() -> bool:
        assert qlite("worker", "--app", "testapp:app", "--burst", env=s3.env).returncode == 0
        s = client.status(bad[0])
        return s["attempts"] >= 4 and s["state"] == "failed"

    eventually(failed_again, 90, "the retried job's two more attempts")
    # The page follows: four attempts, each with its traceback.
    expect(page.locator("#detail .attempt")).to_have_count(4)
    expect(page.locator("#detail pre.tb")).to_have_count(4)
    screenshot(page, f"retried-{s3.name}")

    # A job not yet run has Cancel (and no Retry); the worker applies it.
    page.locator(f'#recent tr.job[data-id="{later}"]').click()
    expect(page.locator("#detail button.retry")).to_have_count(0)
    page.locator("#detail button.cancel").click()
    expect(page.locator("#action-msg")).to_contain_text("cancel requested (was pending)")
    assert any(k.startswith(f"inbox/default/{later}.cancel.") for k in bucket_keys(s3, "inbox/"))
    assert qlite("worker", "--app", "testapp:app", "--burst", env=s3.env).returncode == 0
    assert client.status(later)["state"] == "cancelled"


def test_dashboard_token_must_be_long_enough(s3):
    run_jobs(s3, ok=1, failing=0)
    out = qlite("dashboard", "--port", "0", "--token", "short", env=s3.env, timeout=30)
    assert out.returncode == 1 and "at least 16 characters" in out.stderr
    assert "Traceback" not in out.stderr
    assert os.environ.get("QLITE_DASHBOARD_TOKEN") is None
