"""A hostile inbox: whatever lands in inbox/ ends in quarantine/ with a reason, or runs; the
worker never stops and never drops an object."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_worker import app, keys, put_raw

import qlite
from qlite import envelope
from qlite.errors import EnvelopeError
from qlite.index.db import Index
from qlite.worker.loop import Worker

GOOD = envelope.make("math.add", [1, 2])
FIELDS = list(GOOD)


def hand_made() -> dict[str, bytes]:
    def env(**change):
        return json.dumps({**GOOD, "id": envelope.new_id(), **change}).encode()

    return {
        "nan": env(args=[1]).replace(b"[1]", b"[NaN]"),
        "infinity": env(args=[1]).replace(b"[1]", b"[-Infinity]"),
        "duplicate_keys": env()[:-1] + b', "task": "other.task"}',
        "lone_surrogate": env(kwargs={"x": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"\\ud800"),
        "deep_nesting": env(args=[1]).replace(b"[1]", b"[" * 10000 + b"]" * 10000),
        "huge": b" " * (50 * 1024 * 1024),
        "wrong_types": env(args="not a list", kwargs=[]),
        "unknown_version": env(v=2),
        "not_utf8": b'{"v": 1, "task": "\xff\xfe"}',
        "empty": b"",
    }


def test_hand_made_hostile_objects_are_quarantined_with_their_reasons(s3):
    objects = hand_made()
    ids = {name: envelope.new_id() for name in objects}
    for name, body in objects.items():
        put_raw(s3, f"inbox/default/{ids[name]}.json", body)
    good = qlite.Client().put("math.add", [2, 2])
    Worker(app, s3.settings()).run(burst=True)
    assert good.status()["result"] == 4
    assert keys(s3, "inbox/") == []
    reasons = {r["key"]: r["reason"] for r in Index(s3.db).quarantined(limit=100)}
    assert len(reasons) == len(objects)
    expected = {"nan": "NaN", "infinity": "Infinity", "duplicate_keys": "duplicate key",
                "lone_surrogate": "surrogate", "deep_nesting": "nested too deeply",
                "huge": "over the 262144-byte limit", "wrong_types": "args: expected",
                "unknown_version": "unknown envelope version", "not_utf8": "not UTF-8",
                "empty": "not JSON"}
    for name, fragment in expected.items():
        assert fragment in reasons[f"inbox/default/{ids[name]}.json"], (name, reasons)
    assert len(keys(s3, "quarantine/")) == len(objects)


hostile = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                      max_size=3),
                 max_leaves=10).map(lambda v: json.dumps(v).encode()),
    st.tuples(st.sampled_from(FIELDS), st.none() | st.integers() | st.text(max_size=5)
              | st.lists(st.integers(), max_size=2)).map(
        lambda fv: json.dumps({**GOOD, fv[0]: fv[1]}).encode()),
)


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(hostile, min_size=5, max_size=15))
def test_generated_inbox_objects_end_in_quarantine_or_run_and_the_worker_goes_on(s3, bodies):
    placed = {}
    for body in bodies:
        job_id = envelope.new_id()
        try:  # an object whose id matches its key and that decodes is a real job
            valid = envelope.decode(body)["id"] == job_id
        except EnvelopeError:
            valid = False
        placed[f"inbox/default/{job_id}.json"] = valid
        put_raw(s3, f"inbox/default/{job_id}.json", body)
    good = qlite.Client().put("math.add", [3, 3])
    Worker(app, s3.settings()).run(burst=True)
    assert good.status()["result"] == 6
    assert keys(s3, "inbox/") == []
    quarantined = {r["key"] for r in Index(s3.db).quarantined(limit=10_000)}
    assert {k for k, valid in placed.items() if not valid} <= quarantined
