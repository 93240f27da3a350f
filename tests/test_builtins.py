"""Built-in tasks against real servers: a local HTTP server with slow, flaky, 429 and
redirect-to-private endpoints; a real SMTP server (aiosmtpd); real S3 and SQLite."""

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

import qlite
from conftest import qlite as run_qlite
from qlite.tasks.http import retry_after
from qlite.worker.loop import Worker

calls: dict[str, int] = {}
LARGE = 120 << 20  # bytes: the large upload (more than 100 MB, multipart)
hooks: list = []  # (headers, body) of webhook deliveries


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._route(b"")

    def do_POST(self):  # noqa: N802
        self._route(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _route(self, body):
        path = self.path.split("?")[0]
        n = calls[path] = calls.get(path, 0) + 1
        if path == "/hook":
            hooks.append((dict(self.headers), body))
            self._send(204)
        elif path == "/echo":
            self._send(200, json.dumps({
                "method": self.command, "path": self.path, "body": body.decode(),
                "idempotency_key": self.headers.get("Idempotency-Key")}).encode(),
                [("Content-Type", "application/json"), ("X-Secret-Internal", "no")])
        elif path.startswith("/flaky"):
            self._send(503 if n == 1 else 200, b"busy" if n == 1 else b"ok")
        elif path.startswith("/limited"):
            self._send(429, b"slow down", [("Retry-After", "1")]) if n == 1 \
                else self._send(200, b"ok")
        elif path == "/missing":
            self._send(404, b"no such thing")
        elif path == "/to-metadata":
            self._send(302, headers=[("Location", "http://169.254.169.254/latest/meta-data/")])
        elif path == "/to-echo":
            self._send(302, headers=[("Location", "/echo")])
        elif path == "/big":
            self._send(200, b"x" * (2 << 20))
        elif path == "/large":  # streamed: the server never holds it whole either
            self.send_response(200)
            self.send_header("Content-Type", "application/x-test")
            self.send_header("Content-Length", str(LARGE))
            self.end_headers()
            piece = bytes(range(256)) * 4096  # 1 MiB
            for _ in range(LARGE // len(piece)):
                self.wfile.write(piece)
        elif path == "/slow":
            time.sleep(2)
            self._send(200, b"late")
        elif path == "/binary":
            self._send(200, bytes(range(256)))
        else:
            self._send(500, b"unknown route")


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def allow_loopback(monkeypatch):
    monkeypatch.setenv("QLITE_HTTP_ALLOW", "127.0.0.1/32")


app = qlite.App()  # the worker adds the built-in tasks
collected: list = []


@app.task(name="b.collect")
def collect(value):
    collected.append(value)


def run(s3, job_ids, timeout=60.0) -> list[dict]:
    client = qlite.Client()
    deadline = time.monotonic() + timeout
    while True:
        Worker(app, s3.settings()).run(burst=True)
        statuses = [client.status(i) for i in job_ids]
        if all(s["state"] in ("succeeded", "failed", "cancelled") for s in statuses):
            return statuses
        assert time.monotonic() < deadline, statuses
        time.sleep(0.1)


def put(task, **kwargs) -> str:
    return qlite.Client().put(task, kwargs=kwargs).id


# -- http.request ---------------------------------------------------------------------------


def test_http_request_from_qlite_put_returns_status_headers_and_body(s3, web, allow_loopback):
    r = run_qlite("put", "http.request", json.dumps(
        {"url": f"{web}/echo", "method": "POST", "json": {"a": 1}, "params": {"q": "x"}}),
        env=s3.env)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    [status] = run(s3, [job_id])
    assert status["state"] == "succeeded", status
    result = status["result"]
    assert result["status"] == 200 and result["encoding"] == "text"
    assert result["headers"]["Content-Type"] == "application/json"
    assert "X-Secret-Internal" not in result["headers"]  # only the documented headers
    echoed = json.loads(result["body"])
    assert echoed["method"] == "POST" and echoed["body"] == '{"a": 1}'
    assert echoed["path"] == "/echo?q=x"
    assert echoed["idempotency_key"] == job_id  # the same on every attempt


def test_5xx_is_retried_and_429_waits_for_its_retry_after(s3, web, allow_loopback):
    flaky, limited = f"/flaky-{s3.name}", f"/limited-{s3.name}"
    ids = [put("http.request", url=web + flaky), put("http.request", url=web + limited)]
    statuses = run(s3, ids)
    assert [(s["state"], s["attempts"]) for s in statuses] == [("succeeded", 2)] * 2
    assert "HTTP 503" in statuses[0]["errors"][0]["message"]
    assert "HTTP 429" in statuses[1]["errors"][0]["message"]


def test_a_client_error_fails_at_once_with_the_reply(s3, web, allow_loopback):
    [status] = run(s3, [put("http.request", url=f"{web}/missing")])
    assert (status["state"], status["attempts"]) == ("failed", 1)
    assert "HTTP 404" in status["error"]["message"] and "no such thing" in status["error"][
        "message"]


def test_the_ssrf_guard_refuses_private_addresses_and_redirects_to_them(s3, web, monkeypatch):
    monkeypatch.delenv("QLITE_HTTP_ALLOW", raising=False)
    [status] = run(s3, [put("http.request", url=f"{web}/echo")])
    assert (status["state"], status["attempts"]) == ("failed", 1)
    assert "server-side request forgery guard" in status["error"]["message"]
    monkeypatch.setenv("QLITE_HTTP_ALLOW", "127.0.0.1/32")  # loopback only, not metadata
    [status] = run(s3, [put("http.request", url=f"{web}/to-metadata")])
    assert status["state"] == "failed" and "refused 169.254.169.254" in status["error"]["message"]
    [status] = run(s3, [put("http.request", url=f"{web}/to-echo")])
    assert status["state"] == "succeeded" and status["result"]["url"].endswith("/echo")
    [status] = run(s3, [put("http.request", url="file:///etc/passwd")])
    assert status["state"] == "failed" and "expected http:// or https://" in status["error"][
        "message"]


def test_large_bodies_are_truncated_with_a_flag_and_binary_is_base64(s3, web, allow_loopback):
    big, binary = run(s3, [put("http.request", url=f"{web}/big", max_body=1000),
                           put("http.request", url=f"{web}/binary")])
    assert big["result"]["truncated"] is True and len(big["result"]["body"]) == 1000
    assert binary["result"]["encoding"] == "base64"


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after("120") == 120.0
    assert retry_after("Wed, 25 Nov 2026 12:00:30 GMT", now=1795608000.0) == 30.0
    assert retry_after("soon") is None and retry_after(None) is None


# -- email.send -----------------------------------------------------------------------------


class Mailbox:
    def __init__(self):
        self.messages = []
        self.rcpt_calls: dict[str, int] = {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        n = self.rcpt_calls[address] = self.rcpt_calls.get(address, 0) + 1
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user here"
        if address.startswith("later@") and n == 1:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              envelope.content.decode()))
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as probe:  # aiosmtpd checks its own port, so it cannot be 0
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_login(server, session, envelope, mechanism, auth_data):
    ok = (auth_data.login, auth_data.password) == (b"mailer", b"p@ss/word")
    return AuthResult(success=ok)


@pytest.fixture
def smtp(monkeypatch):
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, auth_require_tls=False,
                            authenticator=check_login)
    controller.start()
    monkeypatch.setenv("QLITE_SMTP_URL", f"smtp://127.0.0.1:{port}?tls=off")
    monkeypatch.setenv("QLITE_SMTP_FROM", "App <app@example.com>")
    yield box
    controller.stop()


def test_email_send_delivers_text_and_html_with_cc_and_bcc(s3, smtp):
    [status] = run(s3, [put("email.send", to=["a@example.com"], cc="c@example.com",
                            bcc=["b@example.com"], subject="Your report",
                            text="plain", html="<p>rich</p>", reply_to="help@example.com")])
    assert status["state"] == "succeeded", status
    [(sender, rcpts, content)] = smtp.messages
    assert sender == "app@example.com"
    assert sorted(rcpts) == ["a@example.com", "b@example.com", "c@example.com"]
    assert "Subject: Your report" in content and "<p>rich</p>" in content
    assert "b@example.com" not in content  # Bcc is not a header
    assert f"Message-ID: <{status['id']}@qlite>" in content


def test_header_injection_is_refused_before_anything_is_sent(s3, smtp):
    [status] = run(s3, [put("email.send", to="a@example.com",
                            subject="Hi\r\nBcc: victim@example.com", text="x")])
    assert (status["state"], status["attempts"]) == ("failed", 1)
    assert "header injection refused" in status["error"]["message"]
    assert smtp.messages == []


def test_a_permanent_smtp_refusal_fails_and_a_transient_one_retries(s3, smtp):
    nobody, later = run(s3, [put("email.send", to="nobody@example.com", subject="s", text="t"),
                             put("email.send", to="later@example.com", subject="s", text="t")])
    assert (nobody["state"], nobody["attempts"]) == ("failed", 1)
    assert "550 5.1.1 no such user here" in nobody["error"]["message"]
    assert (later["state"], later["attempts"]) == ("succeeded", 2)


def test_no_smtp_url_fails_with_the_fix(s3, monkeypatch):
    monkeypatch.delenv("QLITE_SMTP_URL", raising=False)
    [status] = run(s3, [put("email.send", to="a@example.com", subject="s", text="t",
                            sender="app@example.com")])
    assert status["state"] == "failed"
    assert "QLITE_SMTP_URL is not set on the worker" in status["error"]["message"]


# -- webhooks and callbacks -----------------------------------------------------------------


def test_a_webhook_posts_the_final_status_signed_and_callbacks_chain(s3, web, monkeypatch):
    monkeypatch.setenv("QLITE_HTTP_ALLOW", "127.0.0.1/32")
    monkeypatch.setenv("QLITE_WEBHOOK_SECRET", "s3cret")
    hooks.clear()
    collected.clear()
    client = qlite.Client()
    ok = client.put("http.request", kwargs={"url": f"{web}/echo"}, webhook=f"{web}/hook",
                    on_success="b.collect", on_failure="b.collect")
    bad = client.put("http.request", kwargs={"url": f"{web}/missing"}, on_failure=collect)
    run(s3, [ok.id, bad.id])
    deadline = time.monotonic() + 60
    while (len(hooks) < 1 or len(collected) < 2) and time.monotonic() < deadline:
        Worker(app, s3.settings()).run(burst=True)  # the follow-ups are jobs too
        time.sleep(0.1)
    [(headers, body)] = hooks
    status = json.loads(body)
    assert (status["id"], status["state"]) == (ok.id, "succeeded")
    signature = headers["Qlite-Signature"]
    assert qlite.verify_webhook(body, signature, "s3cret")
    assert qlite.verify_webhook(body, signature, ["old-secret", "s3cret"])  # rotation
    assert not qlite.verify_webhook(body, signature, "wrong")
    assert not qlite.verify_webhook(body + b" ", signature, "s3cret")
    assert not qlite.verify_webhook(body, signature, "s3cret", now=time.time() + 3600)
    [success] = [v for v in collected if "state" not in v]
    assert success["status"] == 200  # on_success got the http.request result
    failure = [v for v in collected if v.get("state") == "failed"]
    assert failure and failure[0]["id"] == bad.id  # on_failure got the status record


def test_bad_follow_up_options_are_refused_at_put():
    client = qlite.Client("s3://bucket/p")
    with pytest.raises(qlite.EnvelopeError, match="webhook: expected an http"):
        client.put("x.y", webhook="ftp://example.com/hook")
    with pytest.raises(qlite.EnvelopeError, match="on_success: expected a task name"):
        client.put("x.y", on_success="not a task")


def test_qlite_show_redacts_secret_arguments(s3, web, allow_loopback):
    job = qlite.Client().put("http.request", kwargs={
        "url": f"{web}/echo", "headers": {"Authorization": "Bearer sk-live-123"},
        "json": {"api_key": "k-456", "note": "visible"}})
    run(s3, [job.id])
    for extra in ((), ("--json",)):
        r = run_qlite("show", job.id, *extra, env=s3.env)
        assert r.returncode == 0, r.stderr
        assert "sk-live-123" not in r.stdout and "k-456" not in r.stdout
        assert "[redacted]" in r.stdout and "visible" in r.stdout


# -- upload.* -----------------------------------------------------------------------------------

PEAK_RSS = """import resource, subprocess, sys
r = subprocess.run([sys.executable, "-m", "qlite", "worker", "--app", "qlite.tasks:app",
                    "--burst"], capture_output=True)
sys.stderr.write(r.stderr.decode()[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.exit(r.returncode)"""


def test_a_120_mb_upload_from_a_url_streams_with_bounded_memory(seaweed_target, web):
    import subprocess
    import sys

    s3 = seaweed_target
    env = {**s3.env, "QLITE_HTTP_ALLOW": "127.0.0.1/32"}
    job = qlite.Client().put("upload.from_url", kwargs={"url": f"{web}/large",
                                                        "key": "big/file.bin"})
    r = subprocess.run([sys.executable, "-c", PEAK_RSS], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peak_mb = int(r.stdout.strip().splitlines()[-1])
    print(f"\nupload.from_url of {LARGE >> 20} MiB: worker peak RSS {peak_mb} MiB")
    status = job.status()
    assert status["state"] == "succeeded", r.stderr
    assert status["result"]["size"] == LARGE
    [copied] = run(s3, [put("upload.copy", source="big/file.bin", key="big/copy.bin")])
    assert copied["result"] == {"key": "uploads/big/copy.bin", "size": LARGE}
    head = s3.server.client().head_object(Bucket=s3.bucket,
                                          Key=f"{s3.prefix}uploads/big/copy.bin")
    assert head["ContentLength"] == LARGE
    assert peak_mb < 200  # bounded: far below the object's size plus the worker's own ~70 MB


def test_uploads_stay_under_uploads_and_allowed_buckets(s3, web, allow_loopback):
    bad_key, other_bucket = run(s3, [
        put("upload.from_url", url=f"{web}/binary", key="../results/evil.json"),
        put("upload.copy", source="a.bin", key="b.bin", bucket="someone-elses")])
    assert bad_key["state"] == "failed" and "expected a relative key" in bad_key["error"][
        "message"]
    assert other_bucket["state"] == "failed"
    assert "not in QLITE_UPLOAD_BUCKETS" in other_bucket["error"]["message"]
    [small] = run(s3, [put("upload.from_url", url=f"{web}/binary", key="bytes/b.bin")])
    assert small["result"] == {"key": "uploads/bytes/b.bin", "size": 256,
                               "content_type": "application/octet-stream"}


def test_attachments_stream_from_the_bucket_and_dot_lines_survive(s3, smtp):
    import email
    import os

    data = os.urandom(3 << 20) + b"end"
    s3.server.client().put_object(Bucket=s3.bucket, Key=f"{s3.prefix}uploads/files/r.bin",
                                  Body=data)
    [status] = run(s3, [put("email.send", to="a@example.com", subject="Report",
                            text=".a line that starts with a dot\n..and two\n",
                            attachments=[{"key": "files/r.bin", "filename": "r.bin"}])])
    assert status["state"] == "succeeded", status
    [(_, _, content)] = smtp.messages
    msg = email.message_from_string(content)
    parts = {p.get_content_type(): p for p in msg.walk() if not p.is_multipart()}
    assert parts["text/plain"].get_payload(decode=True).decode().replace("\r\n", "\n") == (
        ".a line that starts with a dot\n..and two\n")
    attachment = parts["application/octet-stream"]
    assert attachment.get_filename() == "r.bin"
    assert attachment.get_payload(decode=True) == data


def test_an_attachment_outside_uploads_is_refused(s3, smtp):
    [status] = run(s3, [put("email.send", to="a@example.com", subject="s", text="t",
                            attachments=[{"key": "../index/generations"}])])
    assert status["state"] == "failed" and "expected a relative key" in status["error"]["message"]
    assert smtp.messages == []


def test_a_slow_api_times_out_and_the_attempt_fails(s3, web, allow_loopback):
    job = qlite.Client().put("http.request", kwargs={"url": f"{web}/slow", "timeout": 0.5},
                             max_attempts=1)
    [status] = run(s3, [job.id])
    assert status["state"] == "failed" and "ReadTimeoutError" in status["error"]["message"]


def test_smtp_login_with_an_escaped_password_works(s3, smtp, monkeypatch):
    # (aiosmtpd 1.4 leaves a refused AUTH unanswered, so the refusal path is not tested here.)
    port = os.environ["QLITE_SMTP_URL"].split(":")[2].split("?")[0]
    monkeypatch.setenv("QLITE_SMTP_URL", f"smtp://mailer:p%40ss%2Fword@127.0.0.1:{port}?tls=off")
    [ok] = run(s3, [put("email.send", to="a@example.com", subject="s", text="t")])
    assert ok["state"] == "succeeded", ok
    assert "p@ss/word" not in json.dumps(ok)


def test_smtp_without_starttls_is_refused_unless_tls_is_off(s3, smtp, monkeypatch):
    port = os.environ["QLITE_SMTP_URL"].split(":")[2].split("?")[0]
    monkeypatch.setenv("QLITE_SMTP_URL", f"smtp://127.0.0.1:{port}")
    [status] = run(s3, [put("email.send", to="a@example.com", subject="s", text="t")])
    assert status["state"] == "failed" and "does not offer STARTTLS" in status["error"]["message"]
    assert smtp.messages == []


def test_built_in_tasks_also_run_in_child_processes(s3, web, allow_loopback):
    job = qlite.Client().put("http.request", kwargs={"url": f"{web}/echo"}, timeout=30)
    app.spec = f"{__name__}:app"  # a timeout runs the job in a child, which loads the app
    [status] = run(s3, [job.id])
    assert status["state"] == "succeeded", status


def test_arguments_of_the_wrong_type_fail_at_once_with_the_field(s3, web, allow_loopback):
    headers, size = run(s3, [put("http.request", url=f"{web}/echo", headers=["x"]),
                             put("http.request", url=f"{web}/echo", max_body="big")])
    assert (headers["state"], headers["attempts"]) == ("failed", 1)
    assert "headers: expected a JSON object (got list)" in headers["error"]["message"]
    assert "max_body: expected a whole number" in size["error"]["message"]
