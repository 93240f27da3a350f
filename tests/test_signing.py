"""Signed inbox objects (QLITE_SIGNING_KEY): producers sign, the worker quarantines what is
unsigned or does not verify, keys rotate by key id. Real servers, real worker, real CLI."""

import json
import subprocess
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import qlite
from conftest import bucket_keys, drain_with, eventually
from conftest import qlite as run_qlite
from qlite import envelope, signing
from qlite.errors import ConfigError, SignatureError
from qlite.index.db import Index
from qlite.settings import Settings
from qlite.worker.loop import Worker

K1 = "k1:" + "1" * 32
K2 = "k2:" + "2" * 32
K3 = "k3:" + "3" * 32

app = qlite.App()
failed_once: set = set()


@app.task(name="math.add")
def add(a, b):
    return a + b


@app.task(name="t.follow_up")
def follow_up(ctx, n):
    return ctx.put("math.add", [n, n]).id


@app.task(name="t.fails_first_run", max_attempts=1)
def fails_first_run(ctx, tag):
    """Fails, then, run again by qlite retry, returns how the object it came from is signed
    (the worker put the envelope back into the inbox for the retry)."""
    if tag not in failed_once:
        failed_once.add(tag)
        raise ValueError("first run fails")
    _, metadata = ctx.client.store.get_with_metadata(envelope.inbox_key(ctx.queue, ctx.job_id))
    return metadata.get(signing.METADATA, "unsigned")[:7]


@app.task(name="t.sum")
def total(values):
    return sum(values)


ticks: list = []


@app.periodic(every=60, name="p.tick")
def tick(ctx):
    ticks.append(ctx.meta["tick"])


app.spec = f"{__name__}:app"


def drain(s3, jobs, key=K1, **settings):
    return drain_with(app, s3, jobs, settings={"signing_key": key, **settings})


def meta(s3, key: str) -> dict:
    return s3.server.client().head_object(Bucket=s3.bucket, Key=s3.prefix + key)["Metadata"]


def quarantine_reason(s3, job_id: str) -> str:
    [key] = [k for k in bucket_keys(s3, f"quarantine/default/{job_id}.")
             if envelope.parse_inbox_key("inbox/" + k.removeprefix("quarantine/"))]
    return meta(s3, key)["qlite-reason"]


# -- sign and verify, pure -------------------------------------------------------------------

secrets = st.text(st.characters(codec="utf-8", exclude_characters=",:"), min_size=16,
                  max_size=40).filter(lambda s: s.strip() == s and len(s.encode()) >= 16)


@given(body=st.binary(max_size=2000), secret=secrets, other=secrets)
def test_a_signature_verifies_for_its_bytes_and_key_only(body, secret, other):
    ring = signing.Keyring((("a", secret.encode()),))
    value = signing.header(body, ring)
    signing.verify(body, value, ring)
    with pytest.raises(SignatureError, match="bad signature"):
        signing.verify(body + b"x", value, ring)
    if other != secret:
        with pytest.raises(SignatureError, match="bad signature"):
            signing.verify(body, value, signing.Keyring((("a", other.encode()),)))


def test_the_first_key_signs_and_every_key_verifies():
    new_and_old = signing.parse(f"{K2},{K1}")
    old = signing.parse(K1)
    assert signing.header(b"{}", new_and_old).startswith("kid=k2,v1=")
    signing.verify(b"{}", signing.header(b"{}", old), new_and_old)  # old objects still verify
    with pytest.raises(SignatureError, match="unknown signing key id 'k2'.*holds k1"):
        signing.verify(b"{}", signing.header(b"{}", new_and_old), old)


@pytest.mark.parametrize("value, reason", [
    (None, "unsigned: QLITE_SIGNING_KEY is set on the worker"),
    ("", "unsigned"),
    ("v1=" + "0" * 64, "malformed signature"),
    ("kid=k1,v1=nothex", "malformed signature"),
    ("kid=k1,v1=" + "0" * 64, "bad signature (key 'k1')"),
])
def test_missing_malformed_and_wrong_signatures_are_refused_with_the_reason(value, reason):
    with pytest.raises(SignatureError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        signing.verify(b"{}", value, signing.parse(K1))


def test_a_bare_secret_is_key_id_default_and_no_repr_shows_a_secret():
    ring = signing.parse("s" * 20)
    assert ring.kids == ["default"]
    settings = Settings.load(env={"QLITE_SIGNING_KEY": f"{K2}, {K1}"})
    assert settings.signing_key.kids == ["k2", "k1"]
    assert "1" * 32 not in repr(settings) and "2" * 32 not in str(settings)


@pytest.mark.parametrize("value, message", [
    ("k1:short", "the secret of key 'k1' is 5 bytes, shorter than 16"),
    ("tooshort", "the secret of key 'default' is 8 bytes"),
    (f"{K1},", "key 2 is empty"),
    (f"{K1},k1:{'9' * 20}", "key id 'k1' is given twice"),
    ("bad kid!:" + "x" * 20, "key 1 has key id 'bad kid!'"),
])
def test_a_bad_key_setting_names_the_setting_and_the_fix_never_the_secret(value, message):
    with pytest.raises(ConfigError) as e:
        Settings.load(env={"QLITE_SIGNING_KEY": value})
    text = str(e.value)
    assert text.startswith("QLITE_SIGNING_KEY: ") and message in text and "Try: " in text
    assert "\n" not in text and "9" * 20 not in text and "x" * 20 not in text


def test_openssl_computes_the_same_signature_as_python():
    body = json.dumps(envelope.make("math.add", [1, 2])).encode()
    secret = "1" * 32
    out = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", secret, "-r"], input=body,
                         capture_output=True, check=True).stdout.decode()
    assert f"kid=k1,v1={out.split()[0]}" == signing.header(body, signing.parse(K1))


# -- against real servers --------------------------------------------------------------------

def test_a_signed_job_carries_its_signature_and_runs(s3):
    job = qlite.Client(signing_key=K1).put("math.add", [2, 3])
    key = envelope.inbox_key("default", job.id)
    body = s3.server.client().get_object(Bucket=s3.bucket, Key=s3.prefix + key)["Body"].read()
    signing.verify(body, meta(s3, key)["qlite-signature"], signing.parse(K1))
    [status] = drain(s3, [job])
    assert (status["state"], status["result"]) == ("succeeded", 5)


def test_an_unsigned_object_is_quarantined_with_the_reason(s3):
    job = qlite.Client().put("math.add", [2, 3])  # no key on this producer
    [status] = drain(s3, [job])
    assert (status["state"], status["error"]["type"]) == ("failed", "Quarantined")
    assert status["error"]["message"].startswith("unsigned: QLITE_SIGNING_KEY is set on the "
                                                 "worker")
    assert "Try: set the same QLITE_SIGNING_KEY on the producer" in quarantine_reason(s3, job.id)
    assert [r["reason"][:9] for r in Index(s3.db).quarantined()] == ["unsigned:"]
    assert bucket_keys(s3, "inbox/") == []


def test_packs_are_signed_whole_and_a_tampered_pack_is_quarantined(s3):
    signed = qlite.Client(signing_key=K1).put_many([("math.add", [i, i]) for i in range(3)])
    assert [s["result"] for s in drain(s3, signed)] == [0, 2, 4]
    jobs = qlite.Client(signing_key=K1).put_many([("math.add", [i, i]) for i in range(3)])
    [key] = bucket_keys(s3, "inbox/")
    client = s3.server.client()
    old = client.get_object(Bucket=s3.bucket, Key=s3.prefix + key)
    body = old["Body"].read().replace(b"[2,2]", b"[200,200]")
    client.put_object(Bucket=s3.bucket, Key=s3.prefix + key, Body=body,
                      Metadata=old["Metadata"])
    statuses = drain(s3, jobs)
    assert {(s["state"], s["error"]["type"]) for s in statuses} == {("failed", "Quarantined")}
    assert "does not match" in statuses[0]["error"]["message"] or \
        "signature" in statuses[0]["error"]["message"]


def test_a_worker_without_a_key_runs_signed_and_unsigned_jobs(s3):
    jobs = [qlite.Client(signing_key=K1).put("math.add", [1, 1]), qlite.Client().put(
        "math.add", [2, 2])]
    assert [s["result"] for s in drain(s3, jobs, key=None)] == [2, 4]


def test_a_tampered_object_keeps_its_old_signature_and_is_quarantined(s3):
    job = qlite.Client(signing_key=K1).put("math.add", [2, 3])
    key = s3.prefix + envelope.inbox_key("default", job.id)
    client = s3.server.client()
    old = client.get_object(Bucket=s3.bucket, Key=key)
    env = json.loads(old["Body"].read())
    env["args"] = [200, 300]
    client.put_object(Bucket=s3.bucket, Key=key, Body=json.dumps(env).encode(),
                      Metadata=old["Metadata"])
    [status] = drain(s3, [job])
    assert status["state"] == "failed"
    assert "bad signature (key 'k1')" in quarantine_reason(s3, job.id)
    # The quarantined copy keeps the signature it came with, for whoever looks into it.
    assert meta(s3, f"quarantine/default/{job.id}.json")["qlite-signature"] == \
        old["Metadata"]["qlite-signature"]


def test_rotation_new_key_signs_old_objects_still_run_unknown_key_is_quarantined(s3):
    old = qlite.Client(signing_key=K1).put("math.add", [1, 1])
    new = qlite.Client(signing_key=f"{K2},{K1}").put("math.add", [2, 2])
    assert meta(s3, envelope.inbox_key("default", new.id))["qlite-signature"].startswith(
        "kid=k2,")
    stranger = qlite.Client(signing_key=K3).put("math.add", [3, 3])
    statuses = drain(s3, [old, new, stranger], key=f"{K2},{K1}")
    assert [s["state"] for s in statuses] == ["succeeded", "succeeded", "failed"]
    assert "unknown signing key id 'k3'" in quarantine_reason(s3, stranger.id)


def test_follow_up_jobs_the_worker_writes_are_signed_and_run(s3):
    job = qlite.Client(signing_key=K1).put("t.follow_up", [4])
    [status] = drain(s3, [job])
    [child] = drain(s3, [qlite.Client().job(status["result"])])
    assert (child["state"], child["result"]) == ("succeeded", 8)
    assert Index(s3.db).quarantined() == []


def test_periodic_ticks_and_group_then_jobs_the_worker_enqueues_are_signed(s3):
    ticks.clear()
    now = [time.time() // 60 * 60 + 61]
    Worker(app, s3.settings(signing_key=K1), clock=lambda: now[0]).run(burst=True)  # start
    now[0] += 60
    Worker(app, s3.settings(signing_key=K1), clock=lambda: now[0]).run(burst=True)  # fires
    group = qlite.Client(signing_key=K1).group([("math.add", [1, 2]), ("math.add", [3, 4])],
                                               then="t.sum")
    drain(s3, group.jobs)
    [then] = drain(s3, [group.then])  # enqueued by the worker once both members succeeded
    assert (then["state"], then["result"]) == ("succeeded", 10)
    assert len(ticks) == 1 and Index(s3.db).quarantined() == []


def test_follow_up_jobs_from_a_child_process_are_signed_too(s3):
    job = qlite.Client(signing_key=K1).put("t.follow_up", [5])
    [status] = drain(s3, [job], pool="process")
    [child] = drain(s3, [qlite.Client().job(status["result"])])
    assert (child["state"], child["result"]) == ("succeeded", 10)


def test_large_arguments_are_signed_in_their_own_object(s3):
    job = qlite.Client(signing_key=K1, max_payload=1024).put("math.add", ["x" * 3000, "y"])
    ref = envelope.payload_key(job.id)
    assert meta(s3, ref)["qlite-signature"].startswith("kid=k1,")
    [status] = drain(s3, [job])
    assert status["result"] == "x" * 3000 + "y"


def test_a_replaced_large_payload_fails_the_job(s3):
    job = qlite.Client(signing_key=K1, max_payload=1024).put("math.add", ["x" * 3000, "y"])
    s3.server.client().put_object(Bucket=s3.bucket, Key=s3.prefix + envelope.payload_key(
        job.id), Body=json.dumps({"args": [1, 2], "kwargs": {}}).encode())
    [status] = drain(s3, [job])
    assert (status["state"], status["error"]["type"]) == ("failed", "BadSignature")
    assert "unsigned" in status["error"]["message"]


def test_qlite_put_and_qlite_retry_sign_with_the_key_in_the_environment(s3):
    env = {**s3.env, "QLITE_SIGNING_KEY": K1}
    result = run_qlite("put", "t.fails_first_run", f'["{s3.prefix}"]', env=env)
    assert result.returncode == 0, result.stderr
    job = qlite.Client().job(result.stdout.strip())
    assert meta(s3, envelope.inbox_key("default", job.id))["qlite-signature"].startswith(
        "kid=k1,")
    [status] = drain(s3, [job])
    assert status["state"] == "failed"
    # The retry marker is signed; the worker verifies it, then re-puts the envelope signed.
    result = run_qlite("retry", job.id, env=env)
    assert result.returncode == 0, result.stderr
    status = eventually(lambda: (s := drain(s3, [job])[0])["state"] == "succeeded" and s,
                        what="the retried job's success")
    assert status["result"] == "kid=k1,"  # the envelope put back for the retry is signed
    assert Index(s3.db).quarantined() == []


def test_an_unsigned_retry_marker_is_quarantined_and_not_applied(s3):
    job = qlite.Client(signing_key=K1).put("t.fails_first_run", [s3.prefix + "u"])
    [status] = drain(s3, [job])
    assert status["state"] == "failed"
    qlite.Client().retry(job.id)  # a producer without the key
    [marker] = [k for k in bucket_keys(s3, "inbox/") if ".retry." in k]
    Worker(app, s3.settings(signing_key=K1)).run(burst=True)
    assert job.status()["state"] == "failed"  # not run again
    [row] = Index(s3.db).quarantined()
    assert (row["key"], row["reason"][:9]) == (marker, "unsigned:")
    assert marker not in bucket_keys(s3, "inbox/")


def test_a_signed_marker_replayed_under_another_key_is_quarantined(s3):
    signer = qlite.Client(signing_key=K1)
    job = signer.put("t.fails_first_run", [s3.prefix + "r"])
    assert drain(s3, [job])[0]["state"] == "failed"
    body = json.dumps({"v": 1, "kind": "retry", "id": job.id, "request": envelope.new_id()})
    replayed = envelope.marker_key("default", job.id, "retry", envelope.new_id())
    signer.put_object(replayed, body.encode())  # validly signed, but for another request id
    Worker(app, s3.settings(signing_key=K1)).run(burst=True)
    assert job.status()["state"] == "failed"
    [row] = Index(s3.db).quarantined()
    assert "request marker body does not match its key" in row["reason"]


def test_a_bad_key_setting_is_a_one_line_error_for_put_and_worker(s3):
    env = {**s3.env, "QLITE_SIGNING_KEY": "k1:" + "s3cr3t"}
    for args in (("put", "math.add", "[1, 2]"),
                 ("worker", "--app", "tasks:app", "--burst")):
        result = run_qlite(*args, env=env)
        assert result.returncode != 0
        err = result.stderr.strip()
        assert err.startswith("Error: QLITE_SIGNING_KEY: the secret of key 'k1' is 6 bytes")
        assert "\n" not in err and "s3cr3t" not in err, err


def test_the_shell_recipe_signs_like_python(any_s3, tmp_path):
    """docs/signing.md's openssl + curl recipe, run for real against a presigned PUT, on
    every server (user metadata set through a presigned URL)."""
    s3 = any_s3
    env = envelope.make("math.add", [20, 22])
    path = tmp_path / "job.json"
    path.write_bytes(json.dumps(env).encode())
    key = envelope.inbox_key("default", env["id"])
    secret = "1" * 32
    sig = subprocess.run(
        f"openssl dgst -sha256 -hmac \"$SECRET\" -r < {path} | cut -d' ' -f1", shell=True,
        env={"SECRET": secret, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        check=True).stdout.strip()
    header = f"kid=k1,v1={sig}"
    url = s3.server.client().generate_presigned_url("put_object", Params={
        "Bucket": s3.bucket, "Key": s3.prefix + key, "ContentType": "application/json",
        "Metadata": {"qlite-signature": header}}, ExpiresIn=300)
    subprocess.run(["curl", "-sf", "-X", "PUT", "--data-binary", f"@{path}",
                    "-H", "Content-Type: application/json",
                    "-H", f"x-amz-meta-qlite-signature: {header}", url], check=True,
                   capture_output=True)
    [status] = drain(s3, [qlite.Client().job(env["id"])])
    assert (status["state"], status["result"]) == ("succeeded", 42)
