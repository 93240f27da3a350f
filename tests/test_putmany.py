"""qlite put-many FILE.jsonl: packed, resumable, every line checked first, against both
servers."""

import json

import pytest

import qlite
from conftest import bucket_keys, drain_with
from conftest import qlite as run_qlite

app = qlite.App(queues=["default", "imports"])
ran: list[int] = []


@app.task(name="pm.count")
def count(n):
    ran.append(n)
    return n


def write_jobs(path, n):
    lines = [json.dumps({"task": "pm.count", "args": [i]}
                        | ({"queue": "imports"} if i % 2 else {})) for i in range(n)]
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is fine
    return path


def test_put_many_enqueues_a_file_in_packs_and_a_second_run_skips_them(s3, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 2500)
    first = run_qlite("put-many", str(jobs), "--json", env=s3.env)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert (out["jobs"], out["enqueued"], out["skipped"]) == (2500, 2500, 0)
    assert len(bucket_keys(s3, "inbox/")) == 4  # 1,250 jobs per queue: 2 packs each
    again = json.loads(run_qlite("put-many", str(jobs), "--json", env=s3.env).stdout)
    assert (again["enqueued"], again["skipped"], again["first_id"]) == (0, 2500, out["first_id"])
    assert len(bucket_keys(s3, "inbox/")) == 4

    ran.clear()
    first_job, last_job = qlite.Client().job(out["first_id"]), qlite.Client().job(out["last_id"])
    statuses = drain_with(app, s3, [first_job, last_job],
                          settings={"queues": ("default", "imports")})
    assert [s["result"] for s in statuses] == [0, 2499]
    assert sorted(ran) == list(range(2500))
    after = json.loads(run_qlite("put-many", str(jobs), "--json", env=s3.env).stdout)
    assert after["enqueued"] == 0  # done and gone from the inbox: still not enqueued twice
    assert bucket_keys(s3, "inbox/") == []


def test_an_interrupted_put_many_resumes_without_duplicates(s3, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3000)
    items = [json.loads(line) | {"queue": json.loads(line).get("queue", "default")}
             for line in jobs.read_text().split("\n") if line]

    def interrupt(n, skipped):
        raise KeyboardInterrupt  # the first pack written, then the producer dies

    import hashlib
    key = "file:" + hashlib.sha256(jobs.read_bytes()).hexdigest()
    with pytest.raises(KeyboardInterrupt):
        qlite.Client().put_many(items, key=key, progress=interrupt, workers=1)
    assert 1 <= len(bucket_keys(s3, "inbox/")) < 4
    out = json.loads(run_qlite("put-many", str(jobs), "--json", env=s3.env).stdout)
    assert out["skipped"] >= 1000 and out["enqueued"] + out["skipped"] == 3000
    ran.clear()
    drain_with(app, s3, [qlite.Client().job(out["first_id"]), qlite.Client().job(out["last_id"])],
               settings={"queues": ("default", "imports")})
    assert sorted(ran) == list(range(3000))  # every line once


@pytest.mark.parametrize(("line", "message"), [
    ('{"task": "pm.count", "args": [1]', "line 3: not JSON"),
    ('["pm.count", [1]]', 'line 3: expected an object with a "task" name'),
    ('{"task": "pm.count", "colour": "red"}', "line 3: unknown field 'colour'"),
    ('{"task": "no spaces allowed"}', "line 3: task: expected a task name"),
    ('{"task": "pm.count", "args": 5}', "line 3:"),
])
def test_a_bad_line_is_named_and_nothing_is_enqueued(s3, tmp_path, line, message):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"task": "pm.count", "args": [0]}\n\n' + line + "\n")
    result = run_qlite("put-many", str(path), env=s3.env)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert bucket_keys(s3, "inbox/") == []


def test_a_missing_file_is_a_one_line_error(s3, tmp_path):
    result = run_qlite("put-many", str(tmp_path / "nope.jsonl"), env=s3.env)
    assert result.returncode == 1 and "cannot read it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
