"""deploy/: the copy-paste files parse, name only the prefixes the code uses, and run for real
(the Procfile and cron commands drain a real queue; the IAM policies are enforced by a moto
server with IAM authorization on)."""

import configparser
import fcntl
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TASKS_DIR, qlite
from qlite import doorbell, envelope
from qlite.settings import Settings
from qlite.testing.devserver import MotoServer, _wait_port
from qlite.worker.replica import Replica

DEPLOY = ROOT / "deploy"
POLICIES = ["iam/producer.json", "iam/worker.json", "iam/reader.json",
            "bucket-policy-require-if-none-match.json"]
BIN = Path(sys.executable).parent


def load(name: str) -> dict:
    return json.loads((DEPLOY / name).read_text())


def object_prefixes(policy: dict) -> set[str]:
    """The key patterns after BUCKET/PREFIX/ that a policy's object statements name."""
    out = set()
    for st in policy["Statement"]:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for r in resources:
            if r != "arn:aws:s3:::BUCKET":
                assert r.startswith("arn:aws:s3:::BUCKET/PREFIX/"), r
                out.add(r.removeprefix("arn:aws:s3:::BUCKET/PREFIX/"))
    return out


def top(key: str) -> str:
    return key.split("/")[0] + "/*"


def test_policies_are_json_and_name_only_the_prefixes_the_code_writes_and_reads():
    job = envelope.new_id()
    inbox = {top(envelope.inbox_key("q", job)),
             top(envelope.marker_key("q", job, "cancel", envelope.new_id()))}
    assert len(inbox) == 1  # jobs and cancel/retry markers share the producer's one prefix
    payloads = {top(envelope.payload_key(job))}
    results = {top(envelope.result_key(job)), top(envelope.value_key(job))}
    assert len(results) == 1
    for name in POLICIES:
        policy = load(name)
        assert policy["Version"] == "2012-10-17"
        assert all(st["Effect"] in ("Allow", "Deny") for st in policy["Statement"])
    # ... and the one doorbell object (qlite/doorbell.py), read and rung after a put.
    assert object_prefixes(load("iam/producer.json")) == inbox | payloads | {doorbell.KEY}
    assert object_prefixes(load("iam/reader.json")) == results
    assert object_prefixes(load("iam/worker.json")) == {"*"}  # its whole prefix, index/ too
    assert object_prefixes(load("bucket-policy-require-if-none-match.json")) == inbox | payloads


def test_producer_and_reader_may_only_put_and_only_get_but_the_producer_reads_the_doorbell():
    actions = {name: {a for st in load(name)["Statement"] if st["Effect"] == "Allow"
                      for a in ([st["Action"]] if isinstance(st["Action"], str)
                                else st["Action"])}
               for name in ("iam/producer.json", "iam/reader.json", "iam/worker.json")}
    assert actions["iam/producer.json"] == {"s3:PutObject", "s3:GetObject"}
    reads = [st["Resource"] for st in load("iam/producer.json")["Statement"]
             if "s3:GetObject" in st["Action"]]
    assert reads == [f"arn:aws:s3:::BUCKET/PREFIX/{doorbell.KEY}"]
    assert actions["iam/reader.json"] == {"s3:GetObject", "s3:ListBucket"}
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject",
            "s3:ListBucket"} <= actions["iam/worker.json"]


def test_the_bucket_policy_denies_inbox_writes_without_if_none_match_except_the_worker():
    (st,) = load("bucket-policy-require-if-none-match.json")["Statement"]
    assert (st["Effect"], st["Action"]) == ("Deny", "s3:PutObject")
    assert st["Condition"]["Null"] == {"s3:if-none-match": "true"}
    # The worker puts a retried job's envelope back with a plain PUT (ingest._retry).
    assert st["Condition"]["ArnNotLike"] == {"aws:PrincipalArn": "WORKER_ROLE_ARN"}


def render(text: str, bucket: str, prefix: str) -> str:
    """The substitution docs/deploy.md tells users to make."""
    return text.replace("BUCKET", bucket).replace("PREFIX/", f"{prefix}/" if prefix else "")


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "qlite-worker.service").read_text())
    return parser


def test_the_systemd_unit_restarts_always_and_outlasts_the_graceful_stop():
    service = unit()["Service"]
    assert service["Restart"] == "always" and float(service["RestartSec"]) > 0
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    # The worker waits QLITE_GRACE for running jobs, then Replica.stop lets litestream sync
    # (its timeout + 5 s for the subprocess) and exit (15 s) before systemd may SIGKILL.
    sync = inspect.signature(Replica.sync).parameters["timeout"].default + 5
    assert float(service["TimeoutStopSec"]) > Settings().grace + sync + 15
    assert service["EnvironmentFile"] == "/etc/qlite/env"
    assert service["User"] == "qlite" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/qlite" in service["ReadWritePaths"]
    assert "QLITE_DB=/var/lib/qlite/" in (DEPLOY / "env.example").read_text()
    assert shlex.split(service["ExecStart"])[1:] == ["worker", "--app", "tasks:app"]
    assert unit()["Unit"]["StartLimitIntervalSec"] == "0"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    text = (DEPLOY / "qlite-worker.service").read_text()
    # verify checks that ExecStart exists: point it at this venv's qlite.
    path = tmp_path / "qlite-worker.service"
    path.write_text(text.replace("/srv/qlite/venv/bin/qlite", str(BIN / "qlite")))
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "qlite-worker.service" not in result.stderr, result.stderr  # no unknown keys


def app_dir(tmp_path: Path) -> Path:
    """A directory with tasks.py defining ``app``, as the deploy files expect."""
    d = tmp_path / "app"
    d.mkdir()
    (d / "tasks.py").write_text("from testapp import app  # noqa: F401\n")
    return d


def test_the_procfile_worker_runs_jobs_and_stops_gracefully_on_sigterm(s3, tmp_path):
    (line,) = (DEPLOY / "Procfile").read_text().splitlines()
    kind, command = line.split(": ", 1)
    assert kind == "worker"
    job_id = qlite("put", "math.add", "[2, 3]", env=s3.env).stdout.strip()
    env = {**s3.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(shlex.split(command), cwd=app_dir(tmp_path), env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        result = qlite("wait", job_id, "--timeout", "60", env=s3.env, timeout=90)
        assert json.loads(result.stdout)["result"] == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "worker.log").read_text()


def cron_command() -> str:
    lines = [line for line in (DEPLOY / "qlite-burst.cron").read_text().splitlines()
             if line and not line.startswith("#") and not re.match(r"^[A-Z]+=", line)]
    (line,) = lines
    fields = line.split(None, 6)
    assert fields[:5] == ["*/5", "*", "*", "*", "*"] and fields[5] == "qlite"
    return fields[6]


def test_the_cron_line_drains_the_queue_once_and_never_overlaps(s3, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in s3.env.items()
                                if k.startswith(("AWS_", "QLITE_")) or k == "PYTHONPATH"))
    state = tmp_path / "state"
    state.mkdir()
    command = (cron_command().replace("/etc/qlite/env", str(env_file))
               .replace("/srv/qlite/app", str(app_dir(tmp_path)))
               .replace("/srv/qlite/venv/bin/qlite", str(BIN / "qlite"))
               .replace("/var/lib/qlite", str(state))
               .replace("logger -t qlite-burst", "cat"))
    # cron runs it with a bare environment: nothing but what the env file sets.
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def cron() -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", "-c", command], env=bare, capture_output=True,
                              text=True, timeout=120)

    first = qlite("put", "math.add", "[1, 1]", env=s3.env).stdout.strip()
    result = cron()
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(qlite("status", first, "--json", env=s3.env).stdout)["result"] == 2

    second = qlite("put", "math.add", "[2, 2]", env=s3.env).stdout.strip()
    with open(state / "burst.lock", "a") as held:  # a previous run still draining
        fcntl.flock(held, fcntl.LOCK_EX)
        cron()
    assert json.loads(qlite("status", second, "--json", env=s3.env).stdout)["state"] == "pending"
    cron()
    assert json.loads(qlite("status", second, "--json", env=s3.env).stdout)["result"] == 4


def test_the_worker_cli_accepts_every_flag_the_deploy_files_use():
    help_text = qlite("worker", "--help", env=dict(os.environ)).stdout
    commands = [unit()["Service"]["ExecStart"],
                (DEPLOY / "Procfile").read_text().split(": ", 1)[1],
                cron_command().split("exec ", 1)[1].split("'", 1)[0]]
    for command in commands:
        for flag in [a for a in shlex.split(command) if a.startswith("--")]:
            assert re.search(rf"^\s+{re.escape(flag)}\b", help_text, re.M), (flag, command)


# -- the IAM policies, enforced by moto server's IAM authorization -----------------------------

class IamMoto(MotoServer):
    """moto server with IAM authorization: requests after the first ``free`` are checked
    against the policies of the access key's user."""

    def __init__(self, free: int):
        super().__init__()
        self.free = free

    def start(self, timeout: float = 30.0) -> None:
        moto = shutil.which("moto_server", path=str(BIN)) or "moto_server"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(self.free)}
        self.proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        _wait_port(self.port, self.proc, timeout, None)


@pytest.fixture(scope="module")
def iam(tmp_path_factory):
    """A bucket and four users on an IAM-enforcing moto: admin, producer, worker, reader."""
    import boto3

    bucket, prefix = "qlite-iam", "jobs"
    with IamMoto(free=3) as server:
        anon = {"endpoint_url": server.endpoint, "region_name": "us-east-1",
                "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        admin_iam = boto3.client("iam", **anon)
        admin_iam.create_user(UserName="admin")  # these three calls are not authorized
        admin_iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = admin_iam.create_access_key(UserName="admin")["AccessKey"]
        creds = {"aws_access_key_id": key["AccessKeyId"],
                 "aws_secret_access_key": key["SecretAccessKey"]}
        admin = boto3.client("iam", **{**anon, **creds})
        boto3.client("s3", **{**anon, **creds}).create_bucket(Bucket=bucket)
        users = {"admin": creds}
        for role in ("producer", "worker", "reader"):
            policy = json.loads(render((DEPLOY / "iam" / f"{role}.json").read_text(),
                                       bucket, prefix))
            if role == "worker":
                # moto authorizes DeleteObjects (the batch delete) against the bucket's ARN;
                # AWS checks s3:DeleteObject on every key's ARN, which the policy grants.
                policy["Statement"].append({"Effect": "Allow", "Action": "s3:DeleteObject",
                                            "Resource": f"arn:aws:s3:::{bucket}"})
            admin.create_user(UserName=role)
            admin.put_user_policy(UserName=role, PolicyName=role,
                                  PolicyDocument=json.dumps(policy))
            k = admin.create_access_key(UserName=role)["AccessKey"]
            users[role] = {"aws_access_key_id": k["AccessKeyId"],
                           "aws_secret_access_key": k["SecretAccessKey"]}
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "QLITE_"))}
        db = tmp_path_factory.mktemp("iam") / "index.db"

        def env(role: str) -> dict:
            return {**base, "AWS_ENDPOINT_URL_S3": server.endpoint, "AWS_REGION": "us-east-1",
                    "AWS_ACCESS_KEY_ID": users[role]["aws_access_key_id"],
                    "AWS_SECRET_ACCESS_KEY": users[role]["aws_secret_access_key"],
                    "QLITE_URL": f"s3://{bucket}/{prefix}", "QLITE_DB": str(db),
                    "QLITE_REPLICATE": "off", "PYTHONPATH": str(TASKS_DIR)}

        def s3(role: str):  # noqa: ANN202
            from qlite.store import _make_client

            return _make_client(server.endpoint, region_name="us-east-1", **users[role])

        yield {"env": env, "s3": s3, "bucket": bucket, "prefix": prefix}


def denied(call) -> bool:  # noqa: ANN001
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"] == "AccessDenied"
    return False


def test_iam_policies_let_each_role_do_its_part_and_nothing_else(iam, tmp_path):
    bucket, prefix = iam["bucket"], iam["prefix"]
    producer, worker, reader = iam["env"]("producer"), iam["env"]("worker"), iam["env"]("reader")

    put = qlite("put", "math.add", "[2, 3]", env=producer)
    assert put.returncode == 0, put.stderr
    job_id = put.stdout.strip()
    big = qlite("put", "math.add", "-", input=json.dumps(["x" * 300_000, "y"]), env=producer)
    assert big.returncode == 0, big.stderr  # claim check: payloads/ is the producer's too

    # The producer cannot read what it or others enqueued, nor write elsewhere.
    p = iam["s3"]("producer")
    assert denied(lambda: p.get_object(Bucket=bucket,
                                       Key=f"{prefix}/{envelope.inbox_key('default', job_id)}"))
    assert denied(lambda: p.put_object(Bucket=bucket, Key=f"{prefix}/results/{job_id}.json",
                                       Body=b"{}"))
    assert denied(lambda: p.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/"))
    status = qlite("status", job_id, env=producer)
    assert status.returncode == 1 and status.stderr.startswith("Error: s3: get "), status.stderr
    assert "Traceback" not in status.stderr

    # The reader sees the job pending (from a LIST: it may not read the arguments) ...
    pending = qlite("status", job_id, "--json", env=reader)
    assert pending.returncode == 0, pending.stderr
    assert json.loads(pending.stdout)["state"] == "pending"
    # ... a packed one too (its pack object, not readable either, is found by a LIST) ...
    lines = tmp_path / "jobs.jsonl"
    lines.write_text(json.dumps({"task": "math.add", "args": [4, 5]}) + "\n")
    # (put by the worker's role: put-many's check of results/packs/ is more than producer.json
    # allows)
    many = qlite("put-many", str(lines), "--json", env=worker)
    assert many.returncode == 0, many.stderr
    packed_id = json.loads(many.stdout)["first_id"]
    packed = qlite("status", packed_id, "--json", env=reader)
    assert packed.returncode == 0, packed.stderr
    assert json.loads(packed.stdout)["state"] == "pending"

    bad = envelope.new_id()  # a malformed job, put by hand: the worker must quarantine it
    p.put_object(Bucket=bucket, Key=f"{prefix}/{envelope.inbox_key('default', bad)}",
                 Body=b"not json")

    run = qlite("worker", "--app", "testapp:app", "--burst", env=worker, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "AccessDenied" not in run.stderr, run.stderr

    # ... and then its result, and cannot write anything or read the inbox.
    done = qlite("status", job_id, "--json", env=reader)
    assert json.loads(done.stdout)["result"] == 5, done.stderr
    packed = qlite("status", packed_id, "--json", env=reader)
    assert json.loads(packed.stdout)["result"] == 9, packed.stderr
    quarantined = json.loads(qlite("status", bad, "--json", env=reader).stdout)
    assert quarantined["error"]["type"] == "Quarantined"
    kept = envelope.quarantine_key(envelope.inbox_key("default", bad))
    assert iam["s3"]("admin").head_object(Bucket=bucket, Key=f"{prefix}/{kept}")
    r = iam["s3"]("reader")
    assert denied(lambda: r.put_object(Bucket=bucket, Key=f"{prefix}/results/x.json",
                                       Body=b"{}"))
    assert denied(lambda: r.put_object(Bucket=bucket, Key=f"{prefix}/inbox/default/x.json",
                                       Body=b"{}"))
    # The worker's rights end at its prefix.
    w = iam["s3"]("worker")
    assert denied(lambda: w.put_object(Bucket=bucket, Key="elsewhere/x", Body=b"{}"))
    assert denied(lambda: w.get_object(Bucket=bucket, Key="elsewhere/x"))
    assert not denied(lambda: w.put_object(Bucket=bucket, Key=f"{prefix}/index/probe",
                                           Body=b"{}"))


def test_the_compose_file_pins_its_images_and_creates_the_bucket_the_suite_uses():
    yaml = pytest.importorskip("yaml")
    bucket = "qlite-tests"  # the suite's default QLITE_TEST_BUCKET

    compose = yaml.safe_load((ROOT / "localstack" / "docker-compose.yml").read_text())
    images = {name: s["image"] for name, s in compose["services"].items()}
    assert images["localstack"] == "localstack/localstack:4.14"
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z", images["minio"])
    assert re.fullmatch(r"quay\.io/minio/mc:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z",
                        images["minio-init"])
    init = ROOT / "localstack" / "init" / "ready.d" / "create-bucket.sh"
    assert os.access(init, os.X_OK)
    assert f"s3://{bucket}" in init.read_text()
    assert f"local/{bucket}" in " ".join(compose["services"]["minio-init"]["entrypoint"])
    volume = compose["services"]["localstack"]["volumes"][0]
    assert volume.startswith("./init/ready.d:/etc/localstack/init/ready.d")
