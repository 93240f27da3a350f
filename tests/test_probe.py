"""The attacks of a hostile probe (issue 15), each performed against the real servers
(SeaweedFS or moto, aiosmtpd, local HTTP servers on two origins) and shown refused: the job
fails at once with a one-line reason, nothing reaches the victim, nothing is lost."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_builtins import put, run, smtp  # noqa: F401 - smtp is a fixture
from test_worker import put_raw

import qlite
from conftest import bucket_keys, drain_with
from conftest import qlite as run_qlite
from qlite import envelope
from qlite.index.db import Index

seen: list[dict] = []  # what the "other host" received: path, headers, body


class Recorder(BaseHTTPRequestHandler):
    """The other origin: records every request it gets."""

    def log_message(self, *args):
        pass

    def _any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                     "body": body.decode()})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _any  # noqa: N815


def _serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def origins():
    """(redirector, recorder): two origins on loopback (two ports). The redirector answers
    /to/STATUS/PATH with that redirect to the recorder's PATH, and /same/PATH with a 302 to
    its own recorder-like /echo."""
    recorder = _serve(Recorder)
    other = f"http://127.0.0.1:{recorder.server_address[1]}"

    class Redirector(Recorder):
        def _any(self):
            if self.path.startswith("/to/"):
                _, _, status, rest = self.path.split("/", 3)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(int(status))
                self.send_header("Location", f"{other}/{rest}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/evil":  # an error body that would retitle and clear a terminal
                body = b"\x1b]0;pwned\x07\x1b[2J\x1b[31mno\x9b"
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path.startswith("/same/"):
                self.send_response(302)
                self.send_header("Location", "/" + self.path.split("/", 2)[2])
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                super()._any()

        do_GET = do_POST = _any  # noqa: N815

    redirector = _serve(Redirector)
    yield f"http://127.0.0.1:{redirector.server_address[1]}", other
    redirector.shutdown()
    recorder.shutdown()


@pytest.fixture
def allow_loopback(monkeypatch):
    monkeypatch.setenv("QLITE_HTTP_ALLOW", "127.0.0.1/32")


SECRETS = {"Authorization": "Bearer sk-live-1", "Cookie": "session=s-2", "X-Api-Key": "k-3",
           "Proxy-Authorization": "Basic cDp3", "X-Auth-Token": "t-4"}


def failed_at_once(status: dict, fragment: str) -> None:
    assert (status["state"], status["attempts"]) == ("failed", 1), status
    message = status["error"]["message"]
    assert fragment in message and "\n" not in message, message


# -- 1. mail header injection through RFC 2047 encoded words --------------------------------


def test_encoded_words_that_decode_to_cr_lf_are_refused_in_every_header(s3, smtp):  # noqa: F811
    attacks = [
        {"subject": "=?utf-8?q?Invoice=0D=0AX-Injected:_yes?="},
        {"subject": "=?utf-8?b?SW52b2ljZQ0KDQpib2R5?="},  # CRLF CRLF: headers into the body
        {"subject": "=?utf-8?q?ring=07bell?="},
        {"to": ["=?utf-8?q?Bob=0D=0ABcc:_victim@example.com?= <rcpt@example.com>"]},
        {"reply_to": "=?utf-8?q?x=0AX-Injected:_1?= <r@example.com>"},
        {"attachments": [{"key": "f/r.bin",
                          "filename": "=?utf-8?q?r.bin=0D=0AX-Injected:_yes?="}]},
    ]
    s3.server.client().put_object(Bucket=s3.bucket, Key=f"{s3.prefix}uploads/f/r.bin",
                                  Body=b"data")
    base = {"to": ["rcpt@example.com"], "subject": "s", "text": "body"}
    statuses = run(s3, [put("email.send", **{**base, **attack}) for attack in attacks])
    for status in statuses:
        failed_at_once(status, "header injection refused")
        assert "encoded word" in status["error"]["message"] or "'\\x07'" in status[
            "error"]["message"]
    assert smtp.messages == []
    [ok] = run(s3, [put("email.send", **{**base, "subject": "=?utf-8?q?Caf=C3=A9?="})])
    assert ok["state"] == "succeeded", ok  # a benign encoded word still goes through
    [(_, _, content)] = smtp.messages
    assert "X-Injected" not in content


# -- 10. permanent errors fail at once; 11. the recipient cap --------------------------------


def test_malformed_mail_arguments_and_too_many_recipients_fail_at_once(s3, smtp):  # noqa: F811
    separator, encoded, many = run(s3, [
        put("email.send", to=["rcpt\u2028@example.com"], subject="s", text="t"),
        put("email.send", to=["=?utf-8?q?a?=@example.com"], subject="s", text="t"),
        put("email.send", to=[f"r{i}@example.com" for i in range(101)], subject="s",
            text="t")])
    failed_at_once(separator, "header injection refused")
    failed_at_once(encoded, "is not an email address")
    failed_at_once(many, "over the limit of 100 recipients")
    assert smtp.messages == [] and smtp.rcpt_calls == {}
    [hundred] = run(s3, [put("email.send", to=[f"r{i}@example.com" for i in range(100)],
                             subject="s", text="t")])
    assert hundred["state"] == "succeeded" and len(smtp.messages[0][1]) == 100


def test_malformed_upload_arguments_fail_at_once(s3, origins, allow_loopback):
    redirector, _ = origins
    header, empty_bucket, newline_key = run(s3, [
        put("upload.from_url", url=f"{redirector}/echo", key="a.bin",
            headers={"X-Trace": "1\r\nX-Injected: yes"}),
        put("upload.copy", source="a.bin", key="b.bin", bucket=""),
        put("upload.from_url", url=f"{redirector}/echo", key="x.json\n")])
    failed_at_once(header, "header injection refused")
    failed_at_once(empty_bucket, "bucket: expected a bucket name")
    failed_at_once(newline_key, "expected a relative key")
    assert not any(s["path"] == "/echo" for s in seen)  # nothing was fetched


# -- 2. credentials stay with their origin ---------------------------------------------------


def test_credentials_are_not_sent_to_a_redirect_on_another_origin(s3, origins,
                                                                   allow_loopback):
    redirector, _ = origins
    seen.clear()
    http, upload = run(s3, [
        put("http.request", url=f"{redirector}/to/302/http-target", headers=SECRETS),
        put("upload.from_url", url=f"{redirector}/to/301/upload-target", key="u.bin",
            headers=SECRETS)])
    assert http["state"] == upload["state"] == "succeeded", (http, upload)
    received = {s["path"]: s["headers"] for s in seen}
    for path in ("/http-target", "/upload-target"):
        leaked = {k for k in SECRETS if k.lower() in received[path]}
        assert leaked == set(), (path, leaked)
    assert "idempotency-key" in received["/http-target"]  # other headers still go
    # The same origin keeps them.
    seen.clear()
    [same] = run(s3, [put("http.request", url=f"{redirector}/same/echo", headers=SECRETS)])
    assert same["state"] == "succeeded"
    assert seen[0]["headers"]["authorization"] == "Bearer sk-live-1"


def test_a_307_does_not_resend_a_body_to_another_origin(s3, origins, allow_loopback):
    redirector, _ = origins
    seen.clear()
    [status] = run(s3, [put("http.request", url=f"{redirector}/to/307/post-target",
                            method="POST", json={"card": "4242"})])
    failed_at_once(status, "would re-send the request body there; refused")
    assert seen == []


# -- 4. IPv6 transition addresses that embed a blocked IPv4 one ------------------------------


@pytest.mark.parametrize("address", ["64:ff9b::7f00:1", "64:ff9b:1:7f00:1::",
                                     "2002:7f00:1::1", "::127.0.0.1", "::ffff:0:127.0.0.1",
                                     "64:ff9b::a9fe:a9fe"])
def test_ipv6_transition_addresses_of_blocked_ipv4_ones_are_refused(s3, origins, monkeypatch,
                                                                    address):
    monkeypatch.delenv("QLITE_HTTP_ALLOW", raising=False)
    port = origins[1].rsplit(":", 1)[1]
    [status] = run(s3, [put("http.request", url=f"http://[{address}]:{port}/")])
    failed_at_once(status, "server-side request forgery guard")
    assert "it embeds" in status["error"]["message"]


# -- 11. a secret in the URL is redacted in the result ---------------------------------------


def test_a_secret_query_parameter_is_redacted_in_the_result_url(s3, origins, allow_loopback):
    redirector, _ = origins
    [status] = run(s3, [put("http.request", url=f"{redirector}/echo",
                            params={"api_key": "sk-9", "q": "visible"})])
    assert status["state"] == "succeeded", status
    assert "sk-9" not in json.dumps(status)
    assert status["result"]["url"].endswith("/echo?api_key=[redacted]&q=visible")


# -- 3. with signing on, an unsigned writer cannot occupy a keyed id -------------------------

K1 = "k1:" + "1" * 32
probe = qlite.App(builtins=False)


@probe.task(name="math.add")
def add(a, b):
    return a + b


charged: list = []


@probe.task(name="probe.charge")
def charge(order):
    charged.append(order)


def test_an_unsigned_writer_cannot_occupy_a_keyed_job_or_pack_id(s3):
    # The attacker can write to inbox/ and knows the keys, so it writes garbage first at the
    # ids a key used to imply (SHA-256 of the key, the same everywhere).
    guessed_job = f"inbox/default/{envelope.key_id('order-7')}.json"
    guessed_pack = (f"inbox/default/{envelope.key_id('pack:batch-1:default:1')[:-3]}000"
                    ".pack.jsonl")
    for key in (guessed_job, guessed_pack):
        put_raw(s3, key, b"garbage")
    client = qlite.Client(signing_key=K1)
    job = client.put("math.add", [2, 3], key="order-7")
    assert client.put("math.add", [2, 3], key="order-7").id == job.id  # still idempotent
    packed = client.put_many([("math.add", [i, i]) for i in range(3)], key="batch-1")
    statuses = drain_with(probe, s3, [job, *packed], settings={"signing_key": K1})
    assert [(s["state"], s["result"]) for s in statuses] == [
        ("succeeded", 5), ("succeeded", 0), ("succeeded", 2), ("succeeded", 4)]
    quarantined = {r["key"]: r["reason"] for r in Index(s3.db).quarantined()}
    assert set(quarantined) == {guessed_job, guessed_pack}
    assert all(r.startswith("unsigned:") for r in quarantined.values())
    again = client.put_many([("math.add", [i, i]) for i in range(3)], key="batch-1")
    assert [j.id for j in again] == [j.id for j in packed]  # the batch is still skipped


# -- 5. an inbox key near the S3 limit is quarantined under a short name ---------------------


def longest_key(s3, head: str) -> str:
    """The longest key ``head`` + 'x'*n this server accepts (AWS: 1,024 bytes in all;
    SeaweedFS has a lower limit), found by writing outside the inbox."""
    probe = "p" * len(head)

    def name(n: int) -> str:  # 100-byte path segments: SeaweedFS limits each to 255 bytes
        return "/".join("x" * 99 for _ in range(n // 100)) + "/" + "x" * (n % 100)

    low, high = 1, 1024
    while low < high:
        mid = (low + high + 1) // 2
        try:
            put_raw(s3, probe + name(mid), b"junk")
        except Exception:
            high = mid - 1
            continue
        s3.server.client().delete_object(Bucket=s3.bucket, Key=s3.prefix + probe + name(mid))
        low = mid
    return head + name(low)


def test_an_inbox_key_at_the_length_limit_is_quarantined_and_burst_ends(s3):
    key = longest_key(s3, "inbox/default/")
    assert len((s3.prefix + key).encode()) > 1000  # within a few bytes of the limit
    put_raw(s3, key, b"junk")
    good = qlite.Client().put("math.add", [1, 1])
    r = run_qlite("worker", "--app", "testapp:app", "--burst", env=s3.env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert good.status()["result"] == 2
    assert bucket_keys(s3, "inbox/") == []
    [record] = Index(s3.db).quarantined()
    assert record["key"] == key  # the original key, in the record
    [copy] = bucket_keys(s3, "quarantine/")
    assert copy.startswith("quarantine/_long/")
    body = s3.server.client().get_object(Bucket=s3.bucket, Key=s3.prefix + copy)["Body"]
    assert body.read() == b"junk"


# -- 7. status reads only the result the id implies; malformed records are one line ----------


def test_status_refuses_a_crafted_result_ref_and_malformed_records(s3):
    put_raw(s3, "secret/creds.json", b'{"password": "hunter2"}')
    crafted, no_dict, wrong_id = (envelope.new_id() for _ in range(3))
    records = {
        crafted: {"v": 1, "id": crafted, "state": "succeeded", "result": None,
                  "result_ref": "secret/creds.json"},
        no_dict: {"v": 1, "id": no_dict, "state": "failed", "error": "boom", "errors": 3},
        wrong_id: {"v": 1, "id": crafted, "state": "succeeded"},
    }
    for job_id, record in records.items():
        put_raw(s3, f"results/{job_id}.json", json.dumps(record).encode())
    for job_id in records:
        for extra in ((), ("--json",)):
            r = run_qlite("status", job_id, *extra, env=s3.env)
            assert r.returncode == 1 and r.stdout == "", r
            assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
            assert "hunter2" not in r.stderr and "Traceback" not in r.stderr
    r = run_qlite("status", crafted, env=s3.env)
    assert "result_ref 'secret/creds.json' is not" in r.stderr


# -- 8. terminal escapes are escaped in human output, exact in JSON --------------------------


def test_escape_sequences_from_a_remote_error_body_are_not_printed_raw(s3, origins,
                                                                       allow_loopback):
    redirector, _ = origins
    [status] = run(s3, [put("http.request", url=f"{redirector}/evil")])
    assert "\x1b]0;pwned" in status["error"]["message"]  # the record keeps the bytes
    job_id = status["id"]
    for command in (("status", job_id), ("show", job_id), ("ls",), ("logs", job_id)):
        r = run_qlite(*command, env=s3.env)
        assert r.returncode == 0, r.stderr
        assert not any(c in r.stdout for c in "\x1b\x07\x9b"), (command, r.stdout)
    assert "\\x1b]0;pwned\\x07" in run_qlite("status", job_id, env=s3.env).stdout
    r = run_qlite("status", job_id, "--json", env=s3.env)
    assert json.loads(r.stdout)["error"] == status["error"]  # JSON stays exact


# -- 9. verify_webhook answers False to any header ------------------------------------------


@pytest.mark.parametrize("signature", [
    "t=1700000000,v1=\u00e9" + "a" * 63,  # non-ASCII v1: compare_digest raised TypeError
    "t=" + "9" * 400 + ",v1=" + "a" * 64,  # a 400-digit t: OverflowError
    "t=\u0661\u0667,v1=" + "a" * 64,  # Arabic-Indic digits, which int() accepts
    "t=-5,v1=" + "a" * 64, "v1", "", "t=1700000000", None, 42,
])
def test_verify_webhook_returns_false_for_any_hostile_signature(signature):
    assert qlite.verify_webhook(b"{}", signature, "s3cret", now=1700000000) is False


# -- 6. signed envelopes cannot be replayed after a purge ------------------------------------


def test_a_signed_envelope_older_than_the_replay_window_is_refused_and_purge_keeps_it(s3):
    import time

    from qlite import signing

    charged.clear()
    # Captured signed bytes of a job put 8 days ago, whose record a purge has since deleted.
    old = envelope.make("probe.charge", ["o-1"], now=time.time() - 8 * 86400)
    raw = envelope.encode(old)
    s3.server.client().put_object(
        Bucket=s3.bucket, Key=s3.prefix + envelope.inbox_key("default", old["id"]), Body=raw,
        Metadata=signing.metadata(raw, signing.parse(K1)))
    fresh = qlite.Client(signing_key=K1).put("probe.charge", ["o-2"])
    replayed, ok = drain_with(probe, s3, [qlite.Client().job(old["id"]), fresh],
                              settings={"signing_key": K1})
    assert charged == ["o-2"] and ok["state"] == "succeeded"
    assert (replayed["state"], replayed["error"]["type"]) == ("failed", "Quarantined")
    assert replayed["error"]["message"].startswith("replay refused: enqueued_at")
    assert bucket_keys(s3, "inbox/") == []  # quarantined, not lost
    env = {**s3.env, "QLITE_SIGNING_KEY": K1}
    r = run_qlite("purge", "--older-than", "1d", env=env)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("Error: --older-than 1d: with QLITE_SIGNING_KEY set")
    assert "Try: --older-than 7d" in r.stderr
    assert run_qlite("purge", "--older-than", "7d", env=env).returncode == 0
