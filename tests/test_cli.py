"""The CLI contract. Output and errors are checked in process (conftest.cli, the same code
the `qlite` entry point runs); each command runs once more through the real entry point in a
subprocess: `put` and `worker` here, the read commands in the end-to-end test below, the others
in the test file of their feature."""

import json
import os

import pytest

from conftest import ROOT, cli, qlite
from qlite import envelope
from qlite.testing.devserver import free_port


def one_line_error(result) -> str:
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err, err
    assert err.startswith("Error: ") and "\n" not in err, err
    return err


def test_put_prints_the_job_id_alone(s3):
    result = qlite("put", "math.add", '{"a": 1, "b": 2}', env=s3.env)
    assert result.returncode == 0, result.stderr
    assert envelope.ID_RE.match(result.stdout.strip())
    assert result.stdout.count("\n") == 1


def test_put_reads_the_payload_from_stdin(s3):
    job_id = cli("put", "math.add", "-", "--queue", "high", env=s3.env,
                 input="[1, 2]").stdout.strip()
    status = json.loads(cli("status", job_id, "--json", env=s3.env).stdout)
    assert (status["state"], status["queue"]) == ("pending", "high")


def test_put_with_a_key_twice_prints_the_same_id(s3):
    a = cli("put", "math.add", "[1, 2]", "--key", "k-1", env=s3.env).stdout
    b = cli("put", "math.add", "[1, 2]", "--key", "k-1", env=s3.env).stdout
    assert a == b and a.strip()


@pytest.mark.parametrize("payload, message", [
    ("{not json", "PAYLOAD is not JSON"),
    ("42", "expected a JSON array (args) or object (kwargs)"),
    ('"text"', "expected a JSON array"),
    ('[NaN]', "NaN is not valid JSON"),
])
def test_put_refuses_a_bad_payload(s3, payload, message):
    assert message in one_line_error(cli("put", "math.add", payload, env=s3.env))


def test_put_refuses_a_negative_delay(s3):
    assert "delay: expected seconds >= 0" in one_line_error(
        cli("put", "math.add", "[]", "--delay", "-5", env=s3.env))


@pytest.mark.parametrize("change, message", [
    ({"QLITE_URL": None}, "QLITE_URL is not set"),
    ({"QLITE_URL": "my-bucket"}, "QLITE_URL: expected s3://bucket[/prefix]"),
    ({"QLITE_URL": "s3://qlite-missing-bucket/x"}, "bucket 'qlite-missing-bucket' does not exist"),
    ({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:{port}"}, "cannot reach"),
    ({"QLITE_MAX_PAYLOAD": "10"}, "over the 10-byte limit"),
])
def test_put_reports_bad_configuration_in_one_line(s3, change, message):
    env = dict(s3.env)
    for k, v in change.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v.format(port=free_port())
    assert message in one_line_error(cli("put", "math.add", "[1, 2]", env=env))


def test_put_reports_refused_credentials(seaweed_target):
    env = {**seaweed_target.env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    assert "SignatureDoesNotMatch" in one_line_error(cli("put", "math.add", "[]", env=env))


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule:app", "no module named 'nosuchmodule'"),
    ("testapp:nothing", "testapp.nothing is nothing, not a qlite.App"),
    ("testapp:add", "not a qlite.App"),
    ("testapp", "expected MODULE:ATTR"),
])
def test_worker_reports_an_unusable_app(s3, spec, message):
    assert message in one_line_error(cli("worker", "--app", spec, "--burst", env=s3.env))


def test_worker_reports_an_unreachable_endpoint(s3):
    """The worker's error path through the real entry point."""
    env = {**s3.env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}"}
    assert "cannot reach" in one_line_error(
        qlite("worker", "--app", "testapp:app", "--burst", env=env))


def test_put_worker_status_wait_ls_show_end_to_end(s3):
    ok = qlite("put", "math.add", '{"a": 2, "b": 3}', env=s3.env).stdout.strip()
    bad = cli("put", "test.always_fail", env=s3.env).stdout.strip()
    worker = qlite("worker", "--app", "testapp:app", "--burst", env=s3.env)
    assert worker.returncode == 0, worker.stderr
    worker = qlite("worker", "--app", "testapp:app", "--burst", env=s3.env)  # the retry
    status = json.loads(qlite("status", ok, "--json", env=s3.env).stdout)
    assert {"id", "state", "task", "attempts", "result", "error"} <= set(status)
    assert (status["state"], status["result"], status["attempts"]) == ("succeeded", 5, 1)
    assert "succeeded" in cli("status", ok, env=s3.env).stdout

    waited = qlite("wait", ok, "--timeout", "10", env=s3.env)
    assert waited.returncode == 0 and json.loads(waited.stdout)["result"] == 5
    failed = cli("wait", bad, "--timeout", "20", env=s3.env)
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["error"]["message"] == "boom"

    listing = qlite("ls", env=s3.env).stdout
    assert ok in listing and bad in listing
    assert bad not in cli("ls", "--state", "succeeded", env=s3.env).stdout
    rows = json.loads(cli("ls", "--json", "--state", "failed", env=s3.env).stdout)
    assert [r["id"] for r in rows] == [bad]
    shown = qlite("show", bad, env=s3.env).stdout
    assert "attempt 1: retry" in shown and "attempt 2: failed" in shown
    assert "ValueError: boom" in shown and "Traceback" in shown


def test_wait_exits_2_on_timeout_and_3_on_an_unknown_job(s3):
    job_id = cli("put", "math.add", "[1, 1]", env=s3.env).stdout.strip()
    assert cli("wait", job_id, "--timeout", "0.5", env=s3.env).returncode == 2
    unknown = cli("wait", envelope.new_id(), "--timeout", "1", env=s3.env)
    assert unknown.returncode == 3
    assert "not in results/ nor inbox/" in unknown.stderr


def test_an_index_path_that_is_not_a_database_is_a_one_line_error(s3, tmp_path):
    (tmp_path / "notadb").write_text("hello")
    env = {**s3.env, "QLITE_DB": str(tmp_path / "notadb")}
    assert "file is not a database" in one_line_error(cli("ls", env=env))
    env = {**s3.env, "QLITE_DB": str(tmp_path / "notadb" / "x.db")}
    assert "Error: " in one_line_error(qlite("worker", "--app", "testapp:app", "--burst",
                                             env=env))


def test_ls_without_an_index_says_where_it_looked(s3, tmp_path):
    env = {**s3.env, "QLITE_DB": str(tmp_path / "none.db")}
    assert "no index at" in one_line_error(cli("ls", env=env))
    assert "expected one of" in one_line_error(cli("ls", "--state", "done", env=s3.env))


def test_both_put_parsers_take_the_options_of_one_table():
    """`qlite put` runs on argparse (the light path) unless typer is loaded already; both
    parsers are built from qlite/cli/put.py's table."""
    import typer.main

    from qlite.cli import put
    from qlite.cli.main import app

    command = typer.main.get_command(app).commands["put"]
    typer_options = {o for p in command.params for o in p.opts if o.startswith("--")}
    argparse_options = {o for a in put.parser()._actions for o in a.option_strings
                        if o.startswith("--")} - {"--help"}
    assert typer_options == argparse_options == {o.flag for o in put.OPTIONS}
    assert [p.name for p in command.params if not p.opts[0].startswith("--")] == \
        [a.name for a in put.ARGUMENTS]


def test_worker_help_shows_the_defaults_of_the_settings_table():
    from typer.testing import CliRunner

    from qlite.cli.main import app
    from qlite.settings import SETTINGS

    text = " ".join(CliRunner().invoke(app, ["worker", "--help"], terminal_width=400)
                    .output.split())
    for s in SETTINGS:
        if s.option in text and s.default is not None and s.name != "queues":
            assert f"(env {s.env}, default {s.default:g}" in text if isinstance(
                s.default, float) else f"(env {s.env}, default {s.default})" in text, s.name


@pytest.mark.parametrize("command", ["put", "worker", "status", "wait", "ls", "show",
                                     "reindex"])
def test_every_command_has_help_with_an_example(command):
    result = cli(command, "--help", env=dict(os.environ)) if command != "put" else \
        qlite(command, "--help", env=None, cwd=ROOT)  # put's help is argparse's, on its path
    assert result.returncode == 0
    assert "example" in result.stdout.lower(), result.stdout
