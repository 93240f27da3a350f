"""End-to-end encryption (QLITE_ENCRYPTION_KEY): the bucket and the index hold only
ciphertext of arguments and results; tampering fails the job; keys rotate."""

import json

import pytest

import qlite
from conftest import drain_with
from conftest import qlite as run_qlite
from qlite import crypto, envelope
from qlite.errors import ConfigError, DecryptError
from qlite.ops.dashboard import Dashboard

SECRET = "s3cr3t-marker-7f1c"
K1, K2 = crypto.keygen(), crypto.keygen()

app = qlite.App()


@app.task(name="enc.echo")
def echo(value):
    return {"echo": value}


@app.task(name="enc.long", max_attempts=2, backoff=0.01)
def long(ctx, value):
    """Reports progress and checkpoints ``value``, fails its first attempt quoting it, then
    returns what ctx.resume held."""
    if ctx.attempt == 1:
        ctx.progress(1, 2, value)
        ctx.checkpoint({"seen": value})
        raise RuntimeError(f"failing with {value}")
    return ctx.resume


def all_bytes(s3) -> bytes:
    """Every object under the queue's prefix, straight from the server."""
    client = s3.server.client()
    keys = [o["Key"] for o in client.list_objects_v2(
        Bucket=s3.bucket, Prefix=s3.prefix).get("Contents", [])]
    return b"".join(client.get_object(Bucket=s3.bucket, Key=k)["Body"].read() for k in keys)


def index_bytes(s3) -> bytes:
    return b"".join(p.read_bytes() for p in s3.db.parent.glob(s3.db.name + "*"))


def test_arguments_and_results_are_ciphertext_in_the_bucket_and_the_index(s3):
    job = qlite.Client(encryption_key=K1).put("enc.echo", [SECRET])
    assert SECRET.encode() not in all_bytes(s3)  # the inbox object is sealed
    [status] = drain_with(app, s3, [job], settings={"encryption_key": K1})
    assert (status["state"], status["result"]) == ("succeeded", {"echo": SECRET})
    assert SECRET.encode() not in all_bytes(s3)
    assert SECRET.encode() not in index_bytes(s3)
    # Without the key the bucket's reader sees that it is encrypted, not the value.
    plain = {k: v for k, v in s3.env.items() if k != "QLITE_ENCRYPTION_KEY"}
    shown = run_qlite("status", job.id, env=plain)
    assert "result: encrypted" in shown.stdout and SECRET not in shown.stdout
    assert json.loads(run_qlite("status", job.id, "--json", env=plain).stdout)["encrypted"]
    opened = run_qlite("status", job.id, "--json", env={**plain, "QLITE_ENCRYPTION_KEY": K1})
    assert json.loads(opened.stdout)["result"] == {"echo": SECRET}
    assert SECRET in run_qlite("show", job.id, env={**plain, "QLITE_ENCRYPTION_KEY": K1}).stdout
    assert SECRET not in run_qlite("show", job.id, env=plain).stdout
    assert Dashboard(s3.db, cipher=crypto.parse(K1)).job(job.id)["result"] == {"echo": SECRET}
    assert SECRET not in json.dumps(Dashboard(s3.db).job(job.id))


def test_errors_progress_messages_and_checkpoints_are_sealed_and_read_back(s3):
    job = qlite.Client(encryption_key=K1).put("enc.long", [SECRET])
    [status] = drain_with(app, s3, [job], settings={"encryption_key": K1})
    assert (status["state"], status["result"]) == ("succeeded", {"seen": SECRET})
    assert status["errors"][0]["message"] == f"failing with {SECRET}"
    assert status["progress"]["message"] == SECRET
    assert SECRET.encode() not in all_bytes(s3)
    assert SECRET.encode() not in index_bytes(s3)
    plain = {k: v for k, v in s3.env.items() if k != "QLITE_ENCRYPTION_KEY"}
    shown = json.loads(run_qlite("status", job.id, "--json", env=plain).stdout)
    assert shown["errors"][0]["type"] == "RuntimeError"  # the type stays readable
    assert shown["errors"][0]["message"].startswith("encrypted")
    assert shown["progress"]["message"] == "encrypted"
    keyed = run_qlite("show", job.id, env={**plain, "QLITE_ENCRYPTION_KEY": K1}).stdout
    assert f"failing with {SECRET}" in keyed


def test_a_tampered_or_moved_ciphertext_fails_the_job_with_a_clear_error(s3):
    client = qlite.Client(encryption_key=K1)
    tampered, donor, moved = (client.put("enc.echo", [SECRET]) for _ in range(3))
    store = client.store
    key = envelope.inbox_key("default", tampered.id)
    env = json.loads(store.get(key))
    ct = bytearray(env["sealed"]["ct"].encode())
    ct[-3] = ord("A") if ct[-3] != ord("A") else ord("B")
    store.put(key, json.dumps({**env, "sealed": {**env["sealed"], "ct": ct.decode()}}).encode())
    # Another job's sealed arguments under this job's id: bound to the id, they do not open.
    donor_env = json.loads(store.get(envelope.inbox_key("default", donor.id)))
    moved_key = envelope.inbox_key("default", moved.id)
    store.put(moved_key, json.dumps({**json.loads(store.get(moved_key)),
                                     "sealed": donor_env["sealed"]}).encode())
    statuses = drain_with(app, s3, [tampered, donor, moved], settings={"encryption_key": K1})
    assert [s["state"] for s in statuses] == ["failed", "succeeded", "failed"]
    for s in (statuses[0], statuses[2]):
        assert s["error"]["type"] == "DecryptError"
        assert "does not decrypt with key" in s["error"]["message"]


def test_rotating_to_a_new_key_keeps_old_jobs_readable(s3):
    old = qlite.Client(encryption_key=K1).put("enc.echo", ["old"])
    new = qlite.Client(encryption_key=f"{K2},{K1}").put("enc.echo", ["new"])
    reader = qlite.Client(encryption_key=f"{K2},{K1}")
    statuses = drain_with(app, s3, [reader.job(old.id), reader.job(new.id)],
                          settings={"encryption_key": f"{K2},{K1}"})
    assert [s["result"] for s in statuses] == [{"echo": "old"}, {"echo": "new"}]
    # Results are sealed with the first key: a reader holding only the old key cannot open them.
    with pytest.raises(DecryptError, match="which QLITE_ENCRYPTION_KEY does not hold"):
        qlite.Client(encryption_key=K1).status(old.id)


def test_a_worker_without_the_key_fails_sealed_jobs_saying_what_to_set(s3):
    job = qlite.Client(encryption_key=K1).put("enc.echo", [SECRET])
    [status] = drain_with(app, s3, [job])
    assert status["state"] == "failed"
    assert "QLITE_ENCRYPTION_KEY is not set" in status["error"]["message"]


@pytest.mark.parametrize("value", ["nokid", "k1:short", "k1:" + "A" * 44 + "," + "k1:" + "A" * 44])
def test_bad_keys_name_the_problem_and_the_fix(value):
    with pytest.raises(ConfigError, match="QLITE_ENCRYPTION_KEY"):
        crypto.parse(value)
    assert "kids=" in repr(crypto.parse(K1)) and K1.split(":")[1] not in repr(crypto.parse(K1))
