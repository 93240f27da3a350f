"""The envelope: ids, strict decoding, validation (pure functions, no server)."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlite import envelope
from qlite.errors import EnvelopeError, PayloadTooLarge

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(args=st.lists(json_values, max_size=5),
       kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
       queue=st.from_regex(envelope.QUEUE_RE, fullmatch=True),
       key=st.none() | st.text(min_size=1, max_size=50),
       priority=st.none() | st.integers(-100, 100))
def test_envelope_round_trips_through_bytes(args, kwargs, queue, key, priority):
    env = envelope.make("math.add", args, kwargs, queue=queue, key=key, priority=priority)
    assert envelope.decode(envelope.encode(env)) == env


def test_ids_sort_by_creation_time():
    ids = [envelope.new_id(now=1_700_000_000 + i / 1000) for i in range(50)]
    ids += [envelope.new_id() for _ in range(50)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 100
    assert all(envelope.ID_RE.match(i) for i in ids)


def test_key_id_is_stable_and_distinct_per_key():
    assert envelope.key_id("order-42") == envelope.key_id("order-42")
    assert envelope.key_id("order-42") != envelope.key_id("order-43")
    assert envelope.ID_RE.match(envelope.key_id("order-42"))


def good() -> dict:
    return envelope.make("math.add", [1, 2])


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"v": 1, "v": 1}', "duplicate key"),
    (b'{"x": NaN}', "NaN is not valid JSON"),
    (b'{"x": Infinity}', "Infinity is not valid JSON"),
    (b'{"x": "\\ud800"}', "lone UTF-16 surrogate"),
    (b"[" * 10000 + b"]" * 10000, "nested too deeply"),
])
def test_decode_refuses_hostile_json_with_a_reason(raw, reason):
    with pytest.raises(EnvelopeError, match=reason):
        envelope.decode(raw)


@pytest.mark.parametrize("change, reason", [
    ({"v": 2}, "unknown envelope version"),
    ({"v": True}, "unknown envelope version"),
    ({"args": {"a": 1}}, "args: expected a JSON array"),
    ({"kwargs": [1]}, "kwargs: expected a JSON object"),
    ({"task": "no spaces please"}, "task: expected"),
    ({"queue": "a/b"}, "queue: expected"),
    ({"id": "not-a-uuid"}, "id: expected"),
    ({"enqueued_at": "yesterday"}, "enqueued_at: expected an RFC 3339"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"timeout": -1}, "timeout"),
    ({"priority": "high"}, "priority"),
    ({"priority": 2**70}, "priority: expected an integer in 32-bit range"),
    ({"record_start": "yes"}, "record_start: expected true or false"),
])
def test_decode_refuses_wrong_fields(change, reason):
    env = {**good(), **change}
    with pytest.raises(EnvelopeError, match=reason):
        envelope.decode(json.dumps(env).encode())


def test_decode_names_missing_fields():
    env = good()
    del env["task"], env["args"]
    with pytest.raises(EnvelopeError, match="misses field.*task, args"):
        envelope.decode(json.dumps(env).encode())


def test_unknown_fields_are_kept():
    env = {**good(), "x-trace": "abc"}
    assert envelope.decode(json.dumps(env).encode())["x-trace"] == "abc"


def test_size_limit_is_enforced_both_ways():
    env = envelope.make("math.add", ["x" * 1000])
    with pytest.raises(PayloadTooLarge, match="over the 500-byte limit"):
        envelope.encode(env, 500)
    with pytest.raises(PayloadTooLarge):
        envelope.decode(envelope.encode(env), 500)


def test_encode_refuses_arguments_that_are_not_json():
    with pytest.raises(EnvelopeError, match="arguments must be JSON"):
        envelope.encode(envelope.make("math.add", [{1, 2}]))


def test_inbox_keys_parse_back():
    job_id = envelope.new_id()
    key = envelope.inbox_key("high", job_id)
    assert envelope.parse_inbox_key(key) == ("high", job_id)
    assert envelope.parse_inbox_key("inbox/high/nope.json") is None
    assert envelope.quarantine_key(key) == f"quarantine/high/{job_id}.json"
