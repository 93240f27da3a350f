"""`qlite doctor` against real servers: all ok where the server is sound, a failing row with a
fix (and exit 1, no traceback) where it is not, including a server that ignores
If-None-Match."""

import json
import re
import time

import pytest
from faultproxy import FaultProxy

from conftest import bucket_keys, qlite
from qlite.ops.doctor import FAIL, OK, WARN, diagnose
from qlite.testing.devserver import free_port

S3_CHECKS = ("settings", "credentials", "endpoint", "bucket", "clock", "write", "read",
             "if-none-match", "if-match", "fleet", "delete")


def doctor(env: dict, *args: str) -> tuple[int, dict, str]:
    out = qlite("doctor", "--json", *args, env=env)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)["checks"]}, out.stderr


def test_doctor_finds_nothing_wrong_with_a_sound_server_and_leaves_nothing_behind(any_s3):
    s3 = any_s3  # doctor's checks are about the server: run on every one
    code, checks, _ = doctor(s3.env)
    assert code == 0, checks
    assert all(checks[name]["status"] == OK for name in S3_CHECKS), checks
    # Replication is off in the test environment: said, not failed.
    assert checks["replica"]["status"] == OK and "off" in checks["replica"]["detail"]
    assert bucket_keys(s3, "doctor/") == []
    table = qlite("doctor", env=s3.env)
    print(f"\n$ qlite doctor   # {s3.name}\n{table.stdout}")
    assert table.returncode == 0
    assert "if-none-match  ok" in table.stdout


def test_an_unreachable_endpoint_fails_with_a_fix_and_exit_1(s3):
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"}
    code, checks, _ = doctor(env)
    assert code == 1
    assert checks["endpoint"]["status"] == FAIL
    assert "cannot reach" in checks["endpoint"]["detail"]
    assert "AWS_ENDPOINT_URL_S3" in checks["endpoint"]["fix"]
    assert checks["write"]["status"] == "skip"
    text = qlite("doctor", env=env)
    assert text.returncode == 1 and "fix: " in text.stdout and "Traceback" not in text.stderr


def test_a_missing_bucket_fails_with_how_to_create_it(any_s3):
    s3 = any_s3  # servers answer a missing bucket differently
    env = {**s3.env, "QLITE_URL": "s3://qlite-no-such-bucket/jobs"}
    code, checks, _ = doctor(env)
    assert code == 1
    assert checks["bucket"]["status"] == FAIL
    assert "does not exist" in checks["bucket"]["detail"]
    assert "mb s3://qlite-no-such-bucket" in checks["bucket"]["fix"]


def test_refused_credentials_fail_the_credentials_row(seaweed_target):
    env = {**seaweed_target.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    code, checks, _ = doctor(env)
    assert code == 1
    assert checks["credentials"]["status"] == FAIL
    assert "SignatureDoesNotMatch" in checks["credentials"]["detail"]
    assert "AWS_SECRET_ACCESS_KEY" in checks["credentials"]["fix"]


def test_missing_credentials_fail_without_asking_the_server(s3, tmp_path):
    env = {k: v for k, v in s3.env.items() if k not in ("AWS_ACCESS_KEY_ID",
                                                         "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    code, checks, _ = doctor(env)
    assert code == 1
    assert checks["credentials"]["status"] == FAIL
    assert checks["endpoint"]["status"] == "skip"


def test_a_malformed_setting_is_one_failing_row():
    code, checks, _ = doctor({"QLITE_URL": "bucket-only", "PATH": "/usr/bin:/bin"})
    assert code == 1
    assert list(checks) == ["settings"]
    assert "QLITE_URL" in checks["settings"]["detail"]


def test_a_server_that_ignores_conditional_headers_fails_both_checks(moto, tmp_path):
    # A proxy that drops If-None-Match and If-Match, as some S3-compatible stores (and
    # proxies in front of them) do: the object is overwritten and doctor must say so.
    moto.create_bucket("qlite-tests")
    with FaultProxy(moto.endpoint, strip=("If-None-Match", "If-Match")) as proxy:
        env = {**moto.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint, "PATH": "/usr/bin:/bin",
               "QLITE_URL": "s3://qlite-tests/ignores", "QLITE_REPLICATE": "off",
               "QLITE_DB": str(tmp_path / "i.db")}
        code, checks, _ = doctor(env)
    assert code == 1
    assert checks["write"]["status"] == OK
    assert checks["if-none-match"]["status"] == FAIL
    assert "enqueue a job twice" in checks["if-none-match"]["detail"]
    assert checks["if-none-match"]["fix"]
    assert checks["if-match"]["status"] == FAIL
    assert checks["fleet"]["status"] == FAIL
    assert "several workers cannot share this bucket" in checks["fleet"]["detail"]
    assert checks["delete"]["status"] == OK


@pytest.mark.parametrize("ahead, status", [(20, WARN), (120, FAIL)])
def test_clock_skew_warns_past_5s_and_fails_past_60s(s3, ahead, status):
    checks = {c.name: c for c in diagnose(clock=lambda: time.time() + ahead)}
    assert checks["clock"].status == status, checks["clock"]
    # The Date header has a resolution of one second.
    seconds = int(re.search(r"(\d+)s ahead of the server", checks["clock"].detail).group(1))
    assert abs(seconds - ahead) <= 2, checks["clock"]
    assert "clock" in checks["clock"].fix


def test_the_replica_is_checked_after_a_replicating_worker_ran(seaweed_target):
    env = {**seaweed_target.env, "QLITE_REPLICATE": "on"}
    code, checks, _ = doctor(env)
    assert checks["replica"]["status"] == WARN and "no replica" in checks["replica"]["detail"]
    assert qlite("put", "math.add", "[1, 2]", env=env).returncode == 0
    ran = qlite("worker", "--app", "testapp:app", "--burst", env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    code, checks, _ = doctor(env)
    assert code == 0, checks
    assert checks["replica"]["status"] == OK, checks["replica"]
    assert "newest" in checks["replica"]["detail"]
