"""The typed rows of the index (JobRow) and the status record (JobStatus), without S3: a
real SQLite index on disk, and records in the exact bytes every qlite so far has written."""

import json

import pytest

from qlite import envelope
from qlite.index.db import Index
from qlite.index.rows import JobRow
from qlite.status import JobStatus, records_in

JOB_ID = "0192f1c4-8f3e-7abc-9def-0123456789ab"

# As written by the worker before JobStatus: key order and all (docs/envelope.md).
TERMINAL = (
    '{"v": 1, "id": "0192f1c4-8f3e-7abc-9def-0123456789ab", '
    '"state": "failed", "task": "math.add", "queue": "default", '
    '"attempts": 2, "max_attempts": 2, "result": null, "error": {"type": "ValueError", '
    '"message": "boom", "traceback": null}, "errors": [{"attempt": 1, "type": "ValueError", '
    '"message": "boom", "traceback": null, "at": "2026-01-01T00:00:01.000Z"}], '
    '"logs": [{"attempt": 1, "lines": []}], "key": null, "enqueued_at": "2026-01-01T00:00:00'
    '.000Z", "started_at": "2026-01-01T00:00:00.500Z", "finished_at": "2026-01-01T00:00:02'
    '.000Z", "progress": null}')
PACKED = (
    '{"v": 1, "id": "0192f1c4-8f3e-7abc-9def-0123456789ab", '
    '"state": "succeeded", "task": "math.add", "queue": "default", '
    '"attempts": 1, "max_attempts": 3, "result": null, "error": null, "errors": [], '
    '"logs": [], "key": "k1", "enqueued_at": "a", "started_at": "b", "finished_at": "c", '
    '"progress": {"done": 1, "total": 2}, "args": [1, 2], "kwargs": {}, '
    '"result_ref": "results/0192f1c4-8f3e-7abc-9def-0123456789ab.value.json", "pack": "p"}')
QUARANTINED = (
    '{"v": 1, "id": "0192f1c4-8f3e-7abc-9def-0123456789ab", '
    '"state": "failed", "task": null, "queue": "default", '
    '"attempts": 0, "result": null, "error": {"type": "Quarantined", "message": "bad json", '
    '"traceback": null}, "errors": [], "quarantine_key": "quarantine/inbox/default/x.json", '
    '"finished_at": "2026-01-01T00:00:00.000Z"}')


@pytest.mark.parametrize("raw", [TERMINAL, PACKED, QUARANTINED])
def test_a_status_record_is_written_back_byte_for_byte(raw):
    status = JobStatus.from_record(json.loads(raw), JOB_ID)
    assert json.dumps(status.to_record()) == raw


def test_a_quarantined_record_is_built_in_the_short_form():
    status = JobStatus.quarantined(JOB_ID, "default", "bad json",
                                   "quarantine/inbox/default/x.json", "2026-01-01T00:00:00.000Z")
    assert json.dumps(status.to_record()) == QUARANTINED


def test_fields_a_newer_qlite_writes_are_kept():
    record = {**json.loads(TERMINAL), "future": {"x": 1}}
    assert JobStatus.from_record(record).to_record()["future"] == {"x": 1}


@pytest.mark.parametrize("bad", [
    None, [], {"id": JOB_ID}, {"id": "other", "state": "failed"},
    {"id": JOB_ID, "state": "exploded"}, {"id": JOB_ID, "state": "failed", "error": "x"},
    {"id": JOB_ID, "state": "failed", "errors": {}},
    {"id": JOB_ID, "state": "failed", "result_ref": 5},
])
def test_what_is_not_a_status_record_of_the_job_is_refused(bad):
    with pytest.raises(ValueError):
        JobStatus.from_record(bad, JOB_ID)


def test_records_in_reads_a_job_record_and_every_member_of_a_pack_record():
    pack = json.dumps({"v": 1, "pack": "p", "complete": True,
                       "jobs": {JOB_ID: json.loads(PACKED), "x": {"not": "a record"}}})
    assert [r.id for r in records_in(TERMINAL.encode())] == [JOB_ID]
    assert [r.pack for r in records_in(pack.encode())] == ["p"]
    assert records_in(b"not json") == [] and records_in(None) == []


def test_the_index_hands_out_job_rows_with_their_json_decoded(tmp_path):
    index = Index(tmp_path / "i.db")
    env = envelope.make("math.add", [2, 3], queue="default")
    index.insert_jobs([{"id": env["id"], "task": "math.add", "queue": "default",
                        "priority": 0, "max_attempts": 3, "run_at": 0.0,
                        "envelope": json.dumps(env), "inbox_key": "inbox/default/x.json",
                        "key": None, "enqueued_at": env["enqueued_at"]}])
    [row] = index.claim(("default",), 1, "me", 60.0)
    assert isinstance(row, JobRow) and row.envelope["args"] == [2, 3]
    assert (row.attempts, row.packed, row.suspect) == (1, False, False)
    index.set_progress([(row.id, 1, {"done": 1, "total": 2})], "me")
    assert index.finish(row.id, 1, "me", "retry", run_at=0.0,
                        error={"type": "ValueError", "message": "boom", "traceback": None},
                        logs=[{"msg": "hi"}])
    got = index.get(row.id)
    assert got is not None
    assert got.error == {"type": "ValueError", "message": "boom", "traceback": None}
    assert got.progress == {"done": 1, "total": 2}
    assert [(a.attempt, a.outcome, a.logs) for a in got.attempt_log] == [
        (1, "retry", [{"msg": "hi"}])]
    [again] = index.claim(("default",), 1, "me", 60.0)
    assert index.finish(again.id, 2, "me", "succeeded", result=json.dumps({"sum": 5}))
    done = index.get(row.id)
    assert done is not None and done.result == {"sum": 5} and done.result_json == '{"sum": 5}'
    assert [r.id for r in index.jobs("succeeded")] == [row.id]
    index.close()


@pytest.mark.parametrize(("text", "may"), [
    ('{"v": 1, "args": [1], "kwargs": {}}', False),
    ('{"v": 1, "webhook": "https://x"}', True),
    ('{"v": 1, "meta": {"on_success": "t.next"}}', True),  # at any depth
    ('{"v": 1, "args": ["webhooks", "on_success!"]}', False),
    ('{"v": 1, "args": ["webhook"]}', True),  # a value like the key: it cannot tell
    ('{"v": 1, "args": ["\\"webhook\\""]}', True),  # escapes: it cannot tell, so it may
    ('{"v": 1, "\\u0077ebhook": "https://x"}', True),
])
def test_a_row_tells_without_decoding_which_keys_its_envelope_cannot_hold(text, may):
    row = JobRow.of({"id": JOB_ID, "envelope": text})
    assert row.envelope_may_hold("webhook", "on_success") is may
    assert "envelope" not in vars(row)  # not decoded
    assert (row.envelope and row.envelope_may_hold("webhook")) is True  # decoded: it may
