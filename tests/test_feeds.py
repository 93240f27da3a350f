"""examples/feeds in a real browser: the Django site (``manage.py runserver``) and its worker
(``manage.py qlite_worker``) on SeaweedFS, feeds served by a local HTTP server."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT

pytest.importorskip("django")
SITE = ROOT / "examples" / "feeds"
FEED = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Local news</title>
<item><title>First story</title><link>https://example.com/1</link></item>
<item><title>&lt;img src=x onerror="window.pwned=1"&gt;</title>
  <link>javascript:alert(1)</link></item>
<item><title>Third story</title><link>https://example.com/3</link></item>
</channel></rss>"""
released = threading.Event()  # set at teardown: the hanging feed answers, its server stops


class FeedServer(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/hang":  # no answer within FEEDS_TIMEOUT: the worker gives up
            released.wait(60)
            return
        body = FEED.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def feeds_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FeedServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    released.set()
    server.shutdown()


@pytest.fixture
def site(seaweed_target):
    """The site and one worker, as ``make demo-web`` runs them; the worker may fetch from
    127.0.0.1 (QLITE_HTTP_ALLOW) and gives a feed 1 s (FEEDS_TIMEOUT)."""
    env = {**seaweed_target.env, "PYTHONPATH": "", "PYTHONUNBUFFERED": "1",
           "DJANGO_SETTINGS_MODULE": "feedsite.settings",  # tests/test_django.py sets another
           "QLITE_HTTP_ALLOW": "127.0.0.1/32", "FEEDS_TIMEOUT": "1",
           "QLITE_POLL_MIN": "0.05", "QLITE_POLL_MAX": "0.2"}
    worker = subprocess.Popen([sys.executable, "manage.py", "qlite_worker"], cwd=SITE, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Once started, the worker no longer competes with the page for the CPU (2 cores here).
    log = []
    for line in worker.stdout:
        log.append(line)
        if "worker started" in line:
            break
    else:
        pytest.fail("the worker exited: " + "".join(log))
    drain = threading.Thread(target=lambda: log.extend(worker.stdout), daemon=True)
    drain.start()
    web = subprocess.Popen([sys.executable, "manage.py", "runserver", "127.0.0.1:0",
                            "--noreload"], cwd=SITE, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        # runserver prints the port it bound (port 0: a free one) once it listens.
        seen = []
        for line in web.stdout:
            seen.append(line)
            if line.startswith("Starting development server at "):
                url = line.split(" at ", 1)[1].strip().rstrip("/")
                break
        else:
            pytest.fail("runserver exited: " + "".join(seen))
        threading.Thread(target=web.stdout.read, daemon=True).start()  # keep the pipe drained
        yield url
    finally:
        for proc in (web, worker):
            proc.terminate()
            proc.wait(30)
        drain.join(10)
        assert worker.returncode == 0, "".join(log)


def add_feed(page, url: str):
    """Submit the form; the POST's response (Playwright's view of the request)."""
    page.fill("#url", url)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.click("button[type=submit]")
    return answer.value


def answered_ms(box) -> int:
    """How long the page waited for the POST that added this feed, as the page measured it."""
    from playwright.sync_api import expect

    expect(box).to_have_attribute("data-answered-ms", re.compile(r"^\d+$"))
    return int(box.get_attribute("data-answered-ms"))


def test_a_feed_is_added_at_once_and_shown_when_fetched_and_a_slow_one_shows_its_error(
        site, feeds_server, page):
    from playwright.sync_api import expect

    page.goto(site)
    response = add_feed(page, f"{feeds_server}/feed.rss")
    assert response.status == 202
    box = page.locator(".feed").last  # feeds are listed newest first
    answered = [answered_ms(box)]
    expect(box).to_have_attribute("data-state", "SUCCESSFUL")
    expect(box.locator("h2")).to_have_text("Local news")
    items = box.locator("ul.items li a")
    expect(items).to_have_text(["First story", '<img src=x onerror="window.pwned=1">',
                                "Third story"])
    # Feed content is text, and only http(s) links become links.
    assert page.evaluate("window.pwned") is None
    assert items.nth(0).get_attribute("href") == "https://example.com/1"
    assert items.nth(1).get_attribute("href") is None

    response = add_feed(page, f"{feeds_server}/hang")
    assert response.status == 202
    slow = page.locator(".feed").first
    answered.append(answered_ms(slow))
    expect(slow).to_have_attribute("data-state", "FAILED")
    expect(slow.locator(".error")).to_have_text(re.compile(
        r"^GET http://127\.0\.0\.1:\d+: ReadTimeoutError: .*Read timed out"))
    expect(box).to_have_attribute("data-state", "SUCCESSFUL")  # the first feed stays

    add_feed(page, "http://10.0.0.1/feed.rss")  # QLITE_HTTP_ALLOW is 127.0.0.1/32 only
    private = page.locator(".feed").first
    expect(private).to_have_attribute("data-state", "FAILED")
    expect(private.locator(".error")).to_contain_text("server-side request forgery guard")
    answered.append(answered_ms(private))
    # Enqueueing is one PutObject: the page had its answer (measured by the page, from the
    # click's POST to its parsed reply) within 500 ms. The best of the three adds is held to
    # it, so one scheduling spike of a loaded test machine does not decide the test.
    assert min(answered) < 500, answered

