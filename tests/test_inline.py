"""Inline keys (QLITE_INLINE): a small job's envelope travels in its object key too, so the
worker's LIST reads it without a GET. Pure parts first, then against real S3 servers."""

import base64
import json

import pytest

import qlite
from conftest import bucket_keys, drain_with
from qlite import envelope
from qlite.crypto import keygen
from qlite.errors import EnvelopeError
from qlite.worker.loop import Worker

app = qlite.App()


@app.task(name="math.add")
def add(a, b):
    return a + b


def small(**extra) -> dict:
    return envelope.make("math.add", [1, 2], queue="default", **extra)


# -- pure ------------------------------------------------------------------------------------

def test_an_inline_key_carries_the_envelope_without_its_id_and_queue():
    env = small(max_attempts=2)
    key = envelope.inline_key(env)
    assert key is not None and key.startswith(f"inbox/default/{env['id']}.")
    assert len(key.rsplit("/", 1)[1]) <= envelope.NAME_MAX
    assert envelope.parse_inbox_key(key) == ("default", env["id"])
    assert envelope.decode(envelope.inline_envelope(key)) == env


def test_an_envelope_too_long_for_one_key_segment_has_no_inline_key():
    assert envelope.inline_key(small(meta={"note": "x" * 200})) is None


def test_plain_keys_markers_and_packs_are_not_inline():
    job_id = envelope.new_id()
    assert envelope.inline_envelope(envelope.inbox_key("default", job_id)) is None
    assert envelope.inline_envelope(envelope.pack_key("default", job_id[:-3] + "000")) is None
    marker = envelope.marker_key("default", job_id, "cancel", envelope.new_id())
    assert envelope.inline_envelope(marker) is None


@pytest.mark.parametrize("text, reason", [
    ("not*base64", None),  # not the inline alphabet: not an inbox key at all
    ("bm90IGpzb24", "not JSON"),  # "not json"
    (base64.urlsafe_b64encode(b'{"id": "x"}').decode().rstrip("="), "without its id"),
    (base64.urlsafe_b64encode(b"[1]").decode().rstrip("="), "without its id"),
])
def test_an_inline_text_that_is_no_envelope_is_refused(text, reason):
    key = f"inbox/default/{envelope.new_id()}.{text}.json"
    if reason is None:
        assert envelope.parse_inbox_key(key) is None
        return
    with pytest.raises(EnvelopeError, match=reason):
        envelope.inline_envelope(key)


# -- against a server ------------------------------------------------------------------------

def inbox(target) -> list[str]:
    return bucket_keys(target, "inbox/")


def test_a_small_job_is_taken_in_from_its_key_without_a_get(any_s3):
    client = qlite.Client()
    job = client.put("math.add", [2, 3])
    [key] = inbox(any_s3)
    assert key == envelope.inline_key(json.loads(client.store.get(key)))  # the body: the same
    assert client.status(job.id)["state"] == "pending"  # found by a LIST
    worker = Worker(app, any_s3.settings())
    read = worker.store.get_with_metadata
    gets: list[str] = []
    worker.store.get_with_metadata = lambda key: gets.append(key) or read(key)  # a spy
    worker.run(burst=True)
    assert job.result() == 5
    assert [k for k in gets if k.startswith("inbox/")] == []
    assert inbox(any_s3) == []


@pytest.mark.parametrize("how", ["QLITE_INLINE=off", "key=", "too long"])
def test_other_jobs_keep_a_key_named_by_their_id(s3, monkeypatch, how):
    if how == "QLITE_INLINE=off":
        monkeypatch.setenv("QLITE_INLINE", "off")
    client = qlite.Client()
    job = client.put("math.add", [2, 3], key="order-1" if how == "key=" else None,
                     meta={"note": "x" * 200} if how == "too long" else None)
    assert inbox(s3) == [envelope.inbox_key("default", job.id)]
    [status] = drain_with(app, s3, [job])
    assert status["result"] == 5


def test_an_inline_key_that_is_no_envelope_runs_the_job_from_its_body(s3):
    """Nothing lost: the object's body decides when its key's text does not decode."""
    client = qlite.Client()
    env = small()
    key = f"inbox/default/{env['id']}.bm90IGpzb24.json"
    client.store.put(key, envelope.encode(env))
    [status] = drain_with(app, s3, [client.job(env["id"])])
    assert (status["state"], status["result"]) == ("succeeded", 3)


def test_a_worker_with_a_signing_key_does_not_trust_an_inline_key(s3):
    """The text of a key is not signed: such a worker reads the body and its signature, so an
    unsigned inline job is quarantined as any unsigned job is."""
    job = qlite.Client().put("math.add", [2, 3])  # no signing key: inline, unsigned
    Worker(app, s3.settings(signing_key=SECRET)).run(burst=True)
    status = qlite.Client().status(job.id)
    assert (status["state"], status["error"]["type"]) == ("failed", "Quarantined")
    [quarantined] = bucket_keys(s3, "quarantine/")
    assert quarantined.startswith(f"quarantine/default/{job.id}.")


def test_a_signing_or_encrypting_producer_writes_no_inline_key(s3):
    signed = qlite.Client(signing_key=SECRET).put("math.add", [2, 3])
    sealed = qlite.Client(encryption_key=keygen()).put("math.add", [2, 3])
    assert sorted(inbox(s3)) == sorted(envelope.inbox_key("default", j.id)
                                       for j in (signed, sealed))


SECRET = "k1:" + "s" * 32
