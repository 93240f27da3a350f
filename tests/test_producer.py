"""The producer against real S3 servers: put, idempotency, status, and clear errors."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

import qlite
from qlite import envelope
from qlite.testing.devserver import free_port


def inbox_keys(s3) -> list[str]:
    client = s3.server.client()
    resp = client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.prefix + "inbox/")
    return [o["Key"].removeprefix(s3.prefix) for o in resp.get("Contents", [])]


def test_put_writes_one_envelope_and_status_reads_pending(s3):
    job = qlite.Client().put("math.add", [1, 2], queue="high")
    [key] = inbox_keys(s3)  # a small job: its key carries the envelope too (QLITE_INLINE)
    assert envelope.parse_inbox_key(key) == ("high", job.id)
    body = s3.server.client().get_object(Bucket=s3.bucket, Key=f"{s3.prefix}{key}")
    env = envelope.decode(body["Body"].read())
    assert envelope.decode(envelope.inline_envelope(key)) == env
    assert (env["task"], env["args"], env["kwargs"], env["queue"]) == \
        ("math.add", [1, 2], {}, "high")
    status = job.status()
    assert (status["state"], status["task"], status["attempts"]) == ("pending", "math.add", 0)
    assert qlite.Client().status(job.id)["state"] == "pending"  # without knowing the queue


def test_the_same_key_twice_is_one_job(s3):
    client = qlite.Client()
    first = client.put("math.add", [1, 2], key="order-42")
    second = client.put("math.add", [1, 2], key="order-42")
    assert first.id == second.id
    assert len(inbox_keys(s3)) == 1


def test_put_many_enqueues_every_job(s3):
    jobs = qlite.Client().put_many([("math.add", [i, i]) for i in range(25)]
                                   + [{"task": "math.add", "kwargs": {"a": 1, "b": 2}}])
    assert len({j.id for j in jobs}) == 26
    assert len(inbox_keys(s3)) == 1  # one pack (tests/test_packs.py)


def test_put_many_validates_everything_before_writing(s3):
    with pytest.raises(qlite.EnvelopeError):
        qlite.Client().put_many([("math.add", [1]), ("math.add", [{1, 2}])])
    assert inbox_keys(s3) == []


def test_delay_and_at_set_not_before(s3):
    client = qlite.Client()
    delayed = client.put("math.add", [1, 2], delay=timedelta(minutes=5))
    at = datetime.now(UTC) + timedelta(days=400)  # no horizon cap
    later = client.put("math.add", [1, 2], at=at)
    nb = envelope.parse_time(delayed.status()["not_before"])
    assert 290 < nb - time.time() < 310
    assert abs(envelope.parse_time(later.status()["not_before"]) - at.timestamp()) < 0.01


@pytest.mark.parametrize("kwargs, message", [
    ({"delay": -1}, "delay: expected seconds >= 0"),
    ({"delay": float("inf")}, "delay: expected seconds >= 0"),
    ({"delay": 1e13}, "before year 10000"),
    ({"at": float("nan")}, "at: expected an aware datetime"),
    ({"delay": 1, "at": 5.0}, "not both"),
    ({"at": datetime(2030, 1, 1)}, "needs a time zone"),
    ({"queue": "bad queue"}, "queue: expected"),
])
def test_bad_put_options_are_refused(s3, kwargs, message):
    with pytest.raises(qlite.QliteError, match=message):
        qlite.Client().put("math.add", [1, 2], **kwargs)


def test_an_oversized_payload_is_refused_before_any_request(s3):
    with pytest.raises(qlite.PayloadTooLarge, match="over the 67108864-byte limit of claim"):
        qlite.Client().put("math.add", ["x" * (65 << 20)])
    assert inbox_keys(s3) == []


def test_a_missing_bucket_is_named(s3):
    with pytest.raises(qlite.BucketNotFound, match="bucket 'qlite-nope-404' does not exist"):
        qlite.Client("s3://qlite-nope-404/x").put("math.add", [1, 2])


def test_an_unreachable_endpoint_fails_within_seconds(s3):
    start = time.monotonic()
    with pytest.raises(qlite.EndpointUnreachable, match="cannot reach"):
        qlite.Client(endpoint_url=f"http://127.0.0.1:{free_port()}").put("math.add", [1, 2])
    assert time.monotonic() - start < 30  # a generous bound: it must not hang


def test_refused_credentials_are_reported(seaweed_target, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(qlite.AccessDenied, match="SignatureDoesNotMatch"):
        qlite.Client().put("math.add", [1, 2])


def test_status_of_an_unknown_job_is_not_found(s3):
    with pytest.raises(qlite.JobNotFound, match="not in results/ nor inbox/"):
        qlite.Client().status(envelope.new_id())
    with pytest.raises(qlite.JobNotFound, match="not a qlite job id"):
        qlite.Client().status("12345")


def test_wait_times_out_on_a_job_nobody_runs(s3):
    job = qlite.Client().put("math.add", [1, 2])
    with pytest.raises(qlite.WaitTimeout, match="still pending"):
        job.wait(timeout=0.5)
    with pytest.raises(qlite.WaitTimeout):
        job.result()


def test_task_put_uses_the_registered_name_and_queue(s3):
    app = qlite.App()

    @app.task(name="math.mul", queue="math")
    def mul(a, b):
        return a * b

    assert mul(3, 4) == 12
    job = mul.put(3, 4)
    assert job.status()["task"] == "math.mul"
    assert [envelope.parse_inbox_key(k) for k in inbox_keys(s3)] == [("math", job.id)]
    assert json.loads(json.dumps(job.status()))["queue"] == "math"
