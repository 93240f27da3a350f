"""Worker logs: text or JSON lines with the job fields, and each job's own log lines kept with
the job (qlite logs ID), under concurrency and in child processes."""

import json
import sqlite3

import pytest

from conftest import eventually, qlite
from qlite import Client
from qlite.index.db import Index
from qlite.worker.logs import MAX_LINES

FIELDS = ("job_id", "task", "queue", "attempt")


def put_chatty(env: dict, n: int, task: str = "log.chatty", **kwargs) -> dict[str, str]:
    client = Client()
    return {client.put(task, kwargs={"tag": f"tag{i:02d}", **kwargs}).id: f"tag{i:02d}"
            for i in range(n)}


def drain(env: dict, jobs, *args: str) -> str:
    """Run burst workers until every job is terminal (a retry waits for its back-off);
    returns their stdout and stderr."""
    output = []

    def finished() -> bool:
        out = qlite("worker", "--app", "logapp:app", "--burst", *args, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        output.append(out.stdout + out.stderr)
        return all(Client().status(j)["state"] in ("succeeded", "failed") for j in jobs)

    eventually(finished, 120, "every job finished")
    return "".join(output)


def test_json_log_lines_are_json_and_job_lines_carry_the_job_fields(s3):
    jobs = put_chatty(s3.env, 3, fail_first=True)
    output = drain({**s3.env, "QLITE_LOG_FORMAT": "json"}, jobs)
    lines = [json.loads(line) for line in output.splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    about_jobs = [line for line in lines if "job_id" in line]
    for line in about_jobs:
        assert all(line.get(k) is not None for k in FIELDS), line
    for job_id, tag in jobs.items():
        mine = [line for line in about_jobs if line["job_id"] == job_id]
        assert {"job started", "job succeeded"} <= {m["msg"] for m in mine}
        retry = next(m for m in mine if m["msg"].startswith("job will retry"))
        assert (retry["attempt"], retry["error"]) == (1, "RuntimeError")
        handler = [m for m in mine if m["logger"] in ("logapp", "some.library")]
        assert handler and all(m["msg"].startswith(tag) for m in handler)
        assert {m["task"] for m in mine} == {"log.chatty"}
        assert {m["queue"] for m in mine} == {"default"}
        errors = [m for m in handler if m["level"] == "ERROR"]
        assert errors and "KeyError" in errors[0]["exc"]


def test_text_log_lines_end_with_key_value_fields(s3):
    (job_id,) = put_chatty(s3.env, 1)
    out = qlite("worker", "--app", "logapp:app", "--burst", env=s3.env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    started = next(line for line in out.stderr.splitlines() if "job started" in line)
    assert started.endswith(f"job started job_id={job_id} task=log.chatty queue=default "
                            "attempt=1")
    handler = next(line for line in out.stderr.splitlines() if "logapp: tag00 info 0" in line)
    assert f"job_id={job_id}" in handler


@pytest.mark.parametrize("args, env, message", [
    (["--log-format", "yaml"], {}, "--log-format: expected text or json (got 'yaml')"),
    ([], {"QLITE_LOG_FORMAT": "xml"}, "QLITE_LOG_FORMAT: expected text or json (got 'xml')"),
    ([], {"QLITE_LOG_LEVEL": "LOUD"}, "QLITE_LOG_LEVEL: expected DEBUG"),
])
def test_a_bad_log_setting_is_one_line_error(args, env, message):
    out = qlite("worker", "--app", "logapp:app", "--url", "s3://qlite-tests/x", *args,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "tests/apps", **env})
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"Error: {message}"), out.stderr
    assert "Traceback" not in out.stderr


def check_captured(env: dict, jobs: dict[str, str], attempts: int) -> None:
    secret = env["AWS_SECRET_ACCESS_KEY"]
    for job_id, tag in jobs.items():
        out = qlite("logs", job_id, "--json", env=env)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)["attempts"]
        assert [a["attempt"] for a in got] == list(range(1, attempts + 1))
        for a in got:
            lines = a["lines"]
            # Only this job's lines: every one starts with its own tag, none with another's.
            assert lines and all(line["msg"].startswith(tag + " ") for line in lines), lines
            assert {line["level"] for line in lines} == {"INFO", "WARNING", "ERROR"}
            loggers = {line["logger"] for line in lines}
            assert {"logapp", "some.library"} <= loggers
            assert any(lg.startswith("qlite.task.") for lg in loggers)  # ctx.logger
            assert len([x for x in lines if "info" in x["msg"]]) == 3
            assert "Traceback" in next(x for x in lines if x["level"] == "ERROR")["msg"]
            assert not any(secret in x["msg"] for x in lines)
            assert any("[redacted]" in x["msg"] for x in lines)
        text = qlite("logs", job_id, env=env)
        assert text.returncode == 0 and f"attempt {attempts}: succeeded" in text.stdout
        assert f"INFO logapp: {tag} info 0" in text.stdout


def test_each_job_keeps_only_its_own_lines_under_concurrency_4(s3):
    jobs = put_chatty(s3.env, 8, fail_first=True, leak=True)
    drain(s3.env, jobs, "--concurrency", "4")
    check_captured(s3.env, jobs, attempts=2)
    # The results/ record holds them too, for whoever cannot read the index.
    status = Client().status(next(iter(jobs)))
    assert [a["attempt"] for a in status["logs"]] == [1, 2]


def test_lines_are_captured_in_child_processes_too(seaweed_target):
    env = seaweed_target.env
    jobs = put_chatty(env, 3, task="log.chatty_child", fail_first=True, leak=True)
    output = drain(env, jobs, "--concurrency", "3")
    check_captured(env, jobs, attempts=2)
    # The child's lines also reach the worker's stderr, with the job fields.
    job_id, tag = next(iter(jobs.items()))
    assert any(f"{tag} info 0" in line and f"job_id={job_id}" in line
               for line in output.splitlines())


def test_capture_is_bounded_per_attempt_and_says_how_many_lines_were_dropped(seaweed_target):
    job = Client().put("log.flood", [MAX_LINES + 50])
    out = qlite("worker", "--app", "logapp:app", "--burst", env=seaweed_target.env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = json.loads(qlite("logs", job.id, "--json", env=seaweed_target.env).stdout
                       )["attempts"][0]["lines"]
    assert len(lines) <= MAX_LINES + 1
    assert "more line(s) not kept" in lines[-1]["msg"]
    assert sum(len(x["msg"]) for x in lines) < 40 * 1024


def test_logs_of_an_unknown_job_is_one_line_error(seaweed_target):
    out = qlite("logs", "0192f1c4-8f3e-7abc-9def-0123456789ab", env=seaweed_target.env)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: no job 0192f1c4") and "Traceback" not in out.stderr


def test_an_index_from_before_job_logs_gains_the_column(tmp_path):
    Index(tmp_path / "old.db").close()
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("ALTER TABLE attempts DROP COLUMN logs")
    conn.commit()
    conn.close()
    index = Index(tmp_path / "old.db")
    columns = {row[1] for row in index.conn.execute("PRAGMA table_info(attempts)")}
    assert "logs" in columns
