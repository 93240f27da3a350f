"""qlite presign: curl, with no credentials at all, enqueues through a presigned PUT or POST, and
the worker runs (or quarantines) what arrives."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, qlite
from qlite import envelope

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")


def presign(target, *args: str) -> dict:
    result = qlite("presign", *args, env=target.env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def curl(*args: str) -> tuple[int, str]:
    """curl with no AWS settings or credentials in its environment; (HTTP status, body)."""
    bare = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args], env=bare,
                         capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def job_file(tmp_path, job_id: str, queue: str = "default", **fields) -> str:
    """The envelope a producer in any language writes (docs/envelope.md)."""
    env = {"v": 1, "id": job_id, "task": "math.add", "args": [2, 3], "kwargs": {},
           "queue": queue, "enqueued_at": envelope.now_rfc3339(), **fields}
    path = tmp_path / f"{job_id}.json"
    path.write_text(json.dumps(env))
    return str(path)


def put_with_curl(signed: dict, path: str, headers: dict | None = None) -> tuple[int, str]:
    hdrs = signed["headers"] if headers is None else headers
    return curl("-X", "PUT", *[a for k, v in hdrs.items() for a in ("-H", f"{k}: {v}")],
                "--data-binary", f"@{path}", signed["url"])


def run_worker(target) -> None:
    result = qlite("worker", "--app", "testapp:app", "--burst", env=target.env, timeout=120)
    assert result.returncode == 0, result.stderr


def status(target, job_id: str) -> dict:
    return json.loads(qlite("status", job_id, "--json", env=target.env).stdout)


def test_curl_enqueues_through_a_presigned_put_without_credentials_and_the_job_runs(s3, tmp_path):
    signed = presign(s3, "--queue", "default", "--expires", "600")
    assert signed["key"] == envelope.inbox_key("default", signed["id"])
    assert signed["headers"] == {"Content-Type": "application/json", "If-None-Match": "*"}
    path = job_file(tmp_path, signed["id"])
    code, body = put_with_curl(signed, path)
    assert code == 200, body
    assert status(s3, signed["id"])["state"] == "pending"
    # The URL cannot overwrite the job, not even with the same bytes.
    code, body = put_with_curl(signed, path)
    assert code == 412, body
    run_worker(s3)
    done = status(s3, signed["id"])
    assert (done["state"], done["result"]) == ("succeeded", 5)


def test_a_presigned_put_with_an_idempotency_key_names_the_same_job_as_put_key(s3):
    signed = presign(s3, "--key", "order-42")
    assert signed["id"] == envelope.key_id("order-42")


def test_the_presigned_put_is_refused_without_its_signed_if_none_match(seaweed_target, tmp_path):
    # moto server checks no signatures, so only SeaweedFS can show this.
    signed = presign(seaweed_target)
    code, body = put_with_curl(signed, job_file(tmp_path, signed["id"]),
                               headers={"Content-Type": "application/json"})
    assert code == 403 and "SignatureDoesNotMatch" in body, body
    missing = qlite("status", signed["id"], env=seaweed_target.env)
    assert missing.returncode == 1 and "no job" in missing.stderr, missing.stderr


def post_with_curl(signed: dict, key: str, path: str) -> tuple[int, str]:
    form = [a for k, v in signed["fields"].items() for a in ("-F", f"{k}={v}")]
    return curl(*form, "-F", f"key={key}", "-F", f"file=@{path}", signed["url"])


def test_a_presigned_post_takes_jobs_within_its_limits_and_refuses_the_rest(s3, tmp_path):
    if s3.name == "moto":
        pytest.skip("moto server ignores POST policy conditions (content-length-range, "
                    "starts-with $key): it stores any upload; SeaweedFS enforces them")
    signed = presign(s3, "--post", "--queue", "default", "--max-bytes", "2000",
                     "--expires", "600")
    assert signed["key_prefix"] == s3.prefix + "inbox/default/"
    ok = envelope.new_id()
    code, body = post_with_curl(signed, f"{signed['key_prefix']}{ok}.json",
                                job_file(tmp_path, ok))
    assert code in (200, 201, 204), body

    big = envelope.new_id()
    code, body = post_with_curl(signed, f"{signed['key_prefix']}{big}.json",
                                job_file(tmp_path, big, meta={"pad": "x" * 3000}))
    assert code == 400 and "EntityTooLarge" in body, (
        f"{s3.name} stored an upload over the POST policy's content-length-range: it does not "
        f"enforce POST policies ({code} {body[:200]})")

    elsewhere = envelope.new_id()
    code, body = post_with_curl(signed, f"{s3.prefix}results/{elsewhere}.json",
                                job_file(tmp_path, elsewhere))
    assert code == 403, body

    run_worker(s3)
    assert status(s3, ok)["result"] == 5
    keys = [o["Key"] for o in s3.server.client().list_objects_v2(
        Bucket=s3.bucket, Prefix=s3.prefix).get("Contents", [])]
    assert not [k for k in keys if big in k or elsewhere in k], keys


def test_a_malformed_envelope_through_a_presigned_put_is_quarantined(s3, tmp_path):
    signed = presign(s3)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"v": 1, "id": signed["id"], "task": "math.add"}))
    code, body = put_with_curl(signed, str(path))
    assert code == 200, body
    run_worker(s3)
    failed = status(s3, signed["id"])
    assert failed["state"] == "failed" and failed["error"]["type"] == "Quarantined"
    assert "misses field(s)" in failed["error"]["message"]
    head = s3.server.client().head_object(
        Bucket=s3.bucket, Key=s3.prefix + envelope.quarantine_key(signed["key"]))
    assert "misses" in head["Metadata"]["qlite-reason"]


@pytest.mark.parametrize("args, message", [
    (["--expires", "0"], "expires: expected whole seconds 1..604800"),
    (["--expires", "604801"], "expires: expected whole seconds 1..604800"),
    (["--post", "--id", "0192f1c4-8f3e-7abc-9def-0123456789ab"], "--id and --key do not"),
    (["--max-bytes", "10"], "--max-bytes limits --post uploads only"),
    (["--id", "not-a-uuid"], "id: expected a UUIDv7/v8"),
    (["--queue", "no/slash"], "queue: expected letters"),
    (["--id", "0192f1c4-8f3e-7abc-9def-0123456789ab", "--key", "k"], "not both"),
    (["--post", "--max-bytes", "0"], "max_bytes: expected a positive"),
])
def test_presign_mistakes_are_one_line_errors(args, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLITE_"))}
    env.update(QLITE_URL="s3://some-bucket/jobs", AWS_ACCESS_KEY_ID="a",
               AWS_SECRET_ACCESS_KEY="b", AWS_ENDPOINT_URL_S3="http://127.0.0.1:9")
    result = qlite("presign", *args, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_presign_help_has_an_example():
    result = qlite("presign", "--help", env=dict(os.environ))
    assert result.returncode == 0 and "Example: qlite presign" in result.stdout


def test_the_curl_examples_of_the_deploy_guide_enqueue_jobs_that_run(seaweed_target, tmp_path):
    if not shutil.which("jq"):
        pytest.skip("the guide's examples use jq, which is not installed")
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("## Enqueue without credentials", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 4, blocks  # presign PUT, upload it, presign POST, upload through it
    env = {**seaweed_target.env,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = "\n".join(blocks) + '\necho "$(jq -r .id signed.json) $ID"\n'
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    put_id, post_id = result.stdout.split()[-2:]
    run_worker(seaweed_target)
    assert status(seaweed_target, put_id)["result"] == 5
    assert status(seaweed_target, post_id)["result"] == 9


def test_on_aws_the_url_is_sigv4_on_the_buckets_regional_endpoint():
    # No request is sent: signing is local. The region must be the bucket's, or AWS refuses.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLITE_"))}
    env.update(QLITE_URL="s3://my-bucket/jobs", AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
               AWS_SECRET_ACCESS_KEY="secret", AWS_REGION="eu-west-1")
    signed = json.loads(qlite("presign", "--queue", "emails", env=env).stdout)
    assert signed["url"].startswith(
        f"https://my-bucket.s3.eu-west-1.amazonaws.com/jobs/inbox/emails/{signed['id']}.json?")
    assert "X-Amz-SignedHeaders=content-type%3Bhost%3Bif-none-match" in signed["url"]
    assert "%2Feu-west-1%2Fs3%2Faws4_request" in signed["url"]
    form = json.loads(qlite("presign", "--post", env=env).stdout)
    assert form["url"] == "https://my-bucket.s3.eu-west-1.amazonaws.com/"
    assert form["key_prefix"] == "jobs/inbox/default/" and form["max_bytes"] == 262144
