"""The job envelope (version 1): fields, ids, strict encode/decode and object keys.

An envelope is one UTF-8 JSON object, written by a producer to
``{prefix}inbox/{queue}/{id}.json``. docs/envelope.schema.json publishes it for producers in
other languages. Standard library only: this module is on the producer's import path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import re
import threading
import time
import zlib
from datetime import UTC, datetime
from typing import Any

from qlite.errors import EnvelopeError, PayloadTooLarge

VERSION = 1
REQUIRED = ("v", "id", "task", "args", "kwargs", "queue", "enqueued_at")

ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[78][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TASK_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

_id_lock = threading.Lock()
_last = [0, 0]  # last millisecond, sequence within it


def new_id(now: float | None = None, rand: bytes | None = None) -> str:
    """A UUIDv7: 48 bits of Unix milliseconds, a 12-bit sequence, 62 random bits.

    Ids sort by creation time (as strings too), so LIST order is roughly FIFO. The sequence
    keeps ids from one process strictly increasing within a millisecond.
    """
    ms = int((time.time() if now is None else now) * 1000)
    with _id_lock:
        if ms <= _last[0]:
            ms, seq = _last[0], _last[1] + 1
            if seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                ms, seq = ms + 1, 0
        else:
            seq = 0
        _last[0], _last[1] = ms, seq
    rand = os.urandom(8) if rand is None else rand
    r = int.from_bytes(rand, "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | r
    return _format(value)


def key_id(key: str, secret: bytes | None = None) -> str:
    """The job id for idempotency key ``key``: a UUIDv8 from SHA-256, the same everywhere.
    With ``secret`` (the signing key, docs/signing.md) from HMAC-SHA256 instead, so a writer
    without the secret cannot predict a keyed id and occupy it first."""
    raw = key.encode("utf-8")
    mac = hmac.new(secret, raw, hashlib.sha256) if secret is not None else hashlib.sha256(raw)
    digest = int.from_bytes(mac.digest()[:16], "big")
    value = (digest & ~(0xF << 76) & ~(0b11 << 62)) | (0x8 << 76) | (0b10 << 62)
    return _format(value)


def shard_of(job_id: str, shards: int) -> int:
    """The fleet shard of a job: its id without the last 12 bits, hashed. A pack's members
    (and a group's) differ only in those bits, so each pack and group lives in one shard,
    and a job retried out of its pack stays where it was."""
    return zlib.crc32(job_id[:-3].encode("ascii", "replace")) % shards


def _format(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_last_time: tuple[float, str] = (-1.0, "")


def now_rfc3339(now: float | None = None) -> str:
    global _last_time
    now = time.time() if now is None else now
    last = _last_time  # one tuple read: safe across threads
    if last[0] == now:  # put_many stamps thousands of envelopes with one time
        return last[1]
    t = datetime.fromtimestamp(now, UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    _last_time = (now, text)
    return text


def parse_time(value: str, field: str = "time") -> float:
    """RFC 3339 (with Z or an offset) to Unix seconds."""
    if not isinstance(value, str):
        raise EnvelopeError(f"{field}: expected an RFC 3339 string (got {value!r})")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise EnvelopeError(
            f"{field}: expected an RFC 3339 time like 2026-01-31T12:00:00Z (got {value!r})"
        ) from None
    if t.tzinfo is None:
        raise EnvelopeError(f"{field}: time needs a zone, e.g. a trailing Z (got {value!r})")
    return t.timestamp()


def make(
    task: str,
    args: Any = (),
    kwargs: dict | None = None,
    *,
    queue: str = "default",
    key: str | None = None,
    not_before: float | None = None,
    expires_at: float | None = None,
    webhook: str | None = None,
    on_success: str | None = None,
    on_failure: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    meta: dict | None = None,
    group: dict | None = None,
    record_start: bool = False,
    now: float | None = None,
    job_id: str | None = None,
) -> dict:
    """Build and validate an envelope dict (``job_id``: a pack member's id, see pack_ids)."""
    now = time.time() if now is None else now
    if key is not None and (not isinstance(key, str) or not key or len(key) > 512):
        raise EnvelopeError(f"key: expected a non-empty string of at most 512 chars (got {key!r})")
    env: dict[str, Any] = {
        "v": VERSION,
        "id": job_id or (key_id(key) if key is not None else new_id(now)),
        "task": task,
        "args": list(args) if isinstance(args, list | tuple) else args,
        "kwargs": {} if kwargs is None else kwargs,
        "queue": queue,
        "enqueued_at": now_rfc3339(now),
    }
    optional = {
        "not_before": now_rfc3339(not_before) if not_before is not None else None,
        "expires_at": now_rfc3339(expires_at) if expires_at is not None else None,
        "priority": priority,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "key": key,
        "webhook": webhook,
        "on_success": on_success,
        "on_failure": on_failure,
        "meta": meta,
        "group": group,
        "record_start": True if record_start else None,
    }
    env.update({k: v for k, v in optional.items() if v is not None})
    validate(env)
    return env


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_NAMES: dict[tuple[str, str], bool] = {}  # (pattern, name) checked (put_many repeats them)


def _name_ok(value: Any, pattern: re.Pattern) -> bool:
    if not isinstance(value, str):
        return False
    known = _NAMES.get((pattern.pattern, value))
    if known is None:
        known = bool(pattern.match(value))
        if len(_NAMES) < 4096:
            _NAMES[(pattern.pattern, value)] = known
    return known


def encode(env: dict, max_size: int | None = None) -> bytes:
    """Envelope dict to bytes: strict JSON (no NaN), UTF-8, within ``max_size``."""
    try:
        raw = _ENCODER.encode(env).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as e:
        raise EnvelopeError(
            f"job {env.get('task')!r}: arguments must be JSON (lists, objects, strings, "
            f"finite numbers, booleans, null): {e}"
        ) from None
    if max_size is not None and len(raw) > max_size:
        raise PayloadTooLarge(
            f"job {env.get('task')!r}: envelope is {len(raw)} bytes, over the {max_size}-byte "
            "limit (QLITE_MAX_PAYLOAD). Try: put the data in the bucket and pass its key"
        )
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):  # a key came twice: which one
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise EnvelopeError(f"duplicate key {k!r} in JSON object")
            seen.add(k)
    return out


def _no_constants(name: str) -> Any:
    raise EnvelopeError(f"{name} is not valid JSON (numbers must be finite)")


def loads_strict(data: bytes, what: str = "envelope") -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, no duplicate keys, no lone surrogates."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EnvelopeError(f"{what} is not UTF-8: {e}") from None
    try:
        value = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
        # json.loads accepts "\ud800" escapes; a lone surrogate cannot be stored or re-sent.
        # Only a \u escape can make one (UTF-8 text holds none): most texts have no escape.
        if "\\u" in text:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except EnvelopeError:
        raise
    except RecursionError:
        raise EnvelopeError(f"{what} is nested too deeply") from None
    except UnicodeEncodeError:
        raise EnvelopeError(f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    except ValueError as e:
        raise EnvelopeError(f"{what} is not JSON: {e}") from None
    return value


def decode(data: bytes, max_size: int | None = None) -> dict:
    """Bytes from the inbox to a validated envelope dict; raises EnvelopeError with the reason."""
    if max_size is not None and len(data) > max_size:
        raise PayloadTooLarge(f"envelope is {len(data)} bytes, over the {max_size}-byte limit")
    env = loads_strict(data)
    validate(env)
    return env


def validate(env: Any) -> None:
    if not isinstance(env, dict):
        raise EnvelopeError(f"envelope must be a JSON object (got {type(env).__name__})")
    missing = [f for f in REQUIRED if f not in env]
    if missing:
        raise EnvelopeError(f"envelope misses field(s): {', '.join(missing)}")
    v = env["v"]
    if type(v) is not int or v != VERSION:
        raise EnvelopeError(f"unknown envelope version v={v!r} (this worker reads v=1)")
    checks = (
        ("id", isinstance(env["id"], str) and ID_RE.match(env["id"]), "a UUIDv7/v8 string"),
        ("task", _name_ok(env["task"], TASK_RE), "a task name like 'math.add'"),
        ("args", isinstance(env["args"], list), "a JSON array"),
        ("kwargs", isinstance(env["kwargs"], dict), "a JSON object"),
        ("queue", _name_ok(env["queue"], QUEUE_RE),
         "a queue name of letters, digits, '_', '-', '.'"),
    )
    for name, ok, expected in checks:
        if not ok:
            raise EnvelopeError(f"{name}: expected {expected} (got {env[name]!r:.80})")
    if env["enqueued_at"] != _last_time[1]:  # the time this process just wrote is valid
        parse_time(env["enqueued_at"], "enqueued_at")
    for name in ("not_before", "expires_at"):
        if env.get(name) is not None:
            parse_time(env[name], name)
    priority = env.get("priority")
    if priority is not None and (type(priority) is not int or not -2**31 <= priority < 2**31):
        raise EnvelopeError(f"priority: expected an integer in 32-bit range "
                            f"(got {priority!r:.40})")
    attempts = env.get("max_attempts")
    if attempts is not None and (type(attempts) is not int or not 1 <= attempts <= 1000):
        raise EnvelopeError(f"max_attempts: expected an integer 1..1000 (got {attempts!r})")
    timeout = env.get("timeout")
    if timeout is not None and (
        type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0
    ):
        raise EnvelopeError(f"timeout: expected a positive number of seconds (got {timeout!r})")
    if env.get("key") is not None and not isinstance(env["key"], str):
        raise EnvelopeError(f"key: expected a string (got {env['key']!r})")
    webhook = env.get("webhook")
    if webhook is not None and not (isinstance(webhook, str) and len(webhook) <= 2048
                                    and re.match(r"^https?://[^\s/]+", webhook)):
        raise EnvelopeError(f"webhook: expected an http(s) URL of at most 2048 chars "
                            f"(got {webhook!r:.80})")
    for name in ("on_success", "on_failure"):
        value = env.get(name)
        if value is not None and not (isinstance(value, str) and TASK_RE.match(value)):
            raise EnvelopeError(f"{name}: expected a task name like 'reports.publish' "
                                f"(got {value!r:.80})")
    group = env.get("group")
    if group is not None and not (
            isinstance(group, dict) and isinstance(group.get("id"), str)
            and ID_RE.match(group["id"]) and type(group.get("size")) is int
            and 1 <= group["size"] <= 100_000 and type(group.get("index")) is int
            and 0 <= group["index"] < group["size"]
            and all(group.get(k) is None or (isinstance(group[k], str) and TASK_RE.match(group[k]))
                    for k in ("then", "on_failure"))):
        raise EnvelopeError(f"group: expected {{id, size, index, then, on_failure}} with a UUID "
                            f"id, 1 <= size <= 100000, 0 <= index < size (got {group!r:.120})")
    ref = env.get("payload_ref")
    if ref is not None and (ref != payload_key(env["id"]) or env["args"] or env["kwargs"]):
        raise EnvelopeError(f"payload_ref: expected 'payloads/{{id}}.json' of this job with "
                            f"empty args and kwargs (got {ref!r:.80})")
    if env.get("record_start") is not None and not isinstance(env["record_start"], bool):
        raise EnvelopeError(f"record_start: expected true or false "
                            f"(got {env['record_start']!r:.40})")
    if env.get("meta") is not None and not isinstance(env["meta"], dict):
        raise EnvelopeError(f"meta: expected a JSON object (got {env['meta']!r:.80})")


SECRET_NAMES = re.compile(r"authorization|cookie|password|passwd|secret|token|api[-_]?key",
                          re.I)


def redacted(value: Any) -> Any:
    """A copy of ``value`` with the values of secret-looking keys (Authorization, Cookie,
    password, token, api_key, ...) replaced, for display: ``qlite show`` never prints them."""
    if isinstance(value, dict):
        return {k: "[redacted]" if isinstance(k, str) and SECRET_NAMES.search(k)
                else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


# Object keys, relative to the queue's prefix.


def inbox_key(queue: str, job_id: str) -> str:
    return f"inbox/{queue}/{job_id}.json"


def result_key(job_id: str) -> str:
    return f"results/{job_id}.json"


def value_key(job_id: str) -> str:
    """A result too large to inline in its status record (claim check)."""
    return f"results/{job_id}.value.json"


def progress_key(job_id: str) -> str:
    """A running job's latest ctx.progress (coalesced; beside its record, so a reader allowed
    results/ can poll it)."""
    return f"results/{job_id}.progress.json"


def checkpoint_key(job_id: str) -> str:
    """A job's last ctx.checkpoint state, read back as ctx.resume when it runs again."""
    return f"checkpoints/{job_id}.json"


def payload_key(job_id: str) -> str:
    """Arguments too large to inline in the envelope (claim check)."""
    return f"payloads/{job_id}.json"


LARGE_LIMIT = 64 << 20  # bytes: the largest arguments or result passed by claim check


def encode_payload(env: dict) -> bytes:
    """A large envelope's arguments as their own object: ``{"args": [...], "kwargs": {...}}``."""
    raw = encode({"args": env["args"], "kwargs": env["kwargs"]})
    if len(raw) > LARGE_LIMIT:
        raise PayloadTooLarge(
            f"job {env.get('task')!r}: arguments are {len(raw)} bytes, over the "
            f"{LARGE_LIMIT}-byte limit of claim-checked payloads. Try: put the data in the "
            "bucket yourself (or upload.*) and pass its key")
    return raw


def quarantine_key(inbox_relative_key: str) -> str:
    return "quarantine/" + inbox_relative_key.removeprefix("inbox/")


REQUEST_KINDS = ("cancel", "retry")


def marker_key(queue: str, job_id: str, kind: str, request_id: str) -> str:
    """A cancel or retry request: a small object next to the job's, seen by the same LIST."""
    return f"inbox/{queue}/{job_id}.{kind}.{request_id}"


def parse_marker(relative_key: str) -> tuple[str, str, str] | None:
    """``inbox/{queue}/{job_id}.{kind}.{request_id}`` to (queue, job_id, kind), else None."""
    parts = relative_key.split("/")
    if len(parts) != 3 or parts[0] != "inbox" or not QUEUE_RE.match(parts[1]):
        return None
    pieces = parts[2].split(".")
    if (len(pieces) != 3 or not ID_RE.match(pieces[0]) or pieces[1] not in REQUEST_KINDS
            or not ID_RE.match(pieces[2])):
        return None
    return parts[1], pieces[0], pieces[1]


def parse_inbox_key(relative_key: str) -> tuple[str, str] | None:
    """``inbox/{queue}/{id}.json`` (or an inline key, ``{id}.{text}.json``) to (queue, id),
    or None if the key has another shape."""
    parts = relative_key.split("/")
    if len(parts) != 3 or parts[0] != "inbox" or not parts[2].endswith(".json"):
        return None
    job_id, _, text = parts[2][: -len(".json")].partition(".")
    if not QUEUE_RE.match(parts[1]) or not ID_RE.match(job_id) or (
            text and not INLINE_RE.match(text)):
        return None
    return parts[1], job_id


# Inline keys: a small job travels in its object's key too, inbox/{queue}/{id}.{text}.json,
# where text is the envelope without its id and queue (the key names both) as unpadded
# base64url JSON. The worker's LIST then returns the job itself: no GET (two requests per job
# instead of three, one round trip sooner). The object's body is the same envelope, so a GET
# still reads it. Not for keyed, signed, sealed or claim-checked jobs (docs/envelope.md).
NAME_MAX = 255  # bytes of one key segment: SeaweedFS (and file-backed servers) refuse longer
INLINE_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def inline_key(env: dict) -> str | None:
    """The inline key of a valid envelope, or None when it does not fit in NAME_MAX."""
    rest = {k: v for k, v in env.items() if k not in ("id", "queue")}
    text = base64.urlsafe_b64encode(_ENCODER.encode(rest).encode("utf-8")).rstrip(b"=")
    name = f"{env['id']}.{text.decode('ascii')}.json"
    return f"inbox/{env['queue']}/{name}" if len(name) <= NAME_MAX else None


def inline_envelope(relative_key: str) -> bytes | None:
    """The envelope bytes an inline key carries (its id and queue from the key), or None if
    the key is not inline. Raises EnvelopeError if its text is no envelope (the caller reads
    the object's body instead)."""
    parsed = parse_inbox_key(relative_key)
    if parsed is None:
        return None
    text = relative_key.rsplit("/", 1)[1][: -len(".json")].partition(".")[2]
    if not text:
        return None
    try:
        rest = loads_strict(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)),
                            "inline key")
    except ValueError as e:  # binascii.Error is a ValueError
        raise EnvelopeError(f"inline key text is not base64url JSON: {e}") from None
    if not isinstance(rest, dict) or "id" in rest or "queue" in rest:
        raise EnvelopeError("inline key text is not an envelope without its id and queue")
    return encode({"v": rest.get("v"), "id": parsed[1], **rest, "queue": parsed[0]})


# Packs: put_many writes many envelopes as one object, inbox/{queue}/{pack_id}.pack.jsonl, one
# envelope per line. Member i of pack P has the id P with its last 12 bits set to i, so the
# pack of any job id is known without a lookup (pack_of) and status can find its record.

PACK_MAX = 1000  # jobs per pack (at most 4096: the index must fit in 12 bits)
PACK_LIMIT = 16 << 20  # bytes per pack object


def pack_ids(n: int, now: float | None = None) -> tuple[str, list[str]]:
    """A new pack id and the ids of its ``n`` members."""
    if not 1 <= n <= PACK_MAX:
        raise ValueError(f"a pack holds 1..{PACK_MAX} jobs (got {n})")
    pack_id = new_id(now)[:-3] + "000"
    return pack_id, [pack_id[:-3] + f"{i:03x}" for i in range(n)]


def pack_of(job_id: str) -> str:
    """The id of the pack that ``job_id`` would belong to, were it a pack member."""
    return job_id[:-3] + "000"


def pack_key(queue: str, pack_id: str) -> str:
    return f"inbox/{queue}/{pack_id}.pack.jsonl"


def pack_result_key(pack_id: str) -> str:
    """The terminal records of a pack's members, written together (results batched)."""
    return f"results/packs/{pack_id}.json"


def parse_pack_key(relative_key: str) -> tuple[str, str] | None:
    """``inbox/{queue}/{pack_id}.pack.jsonl`` to (queue, pack_id), else None."""
    parts = relative_key.split("/")
    if len(parts) != 3 or parts[0] != "inbox" or not parts[2].endswith(".pack.jsonl"):
        return None
    pack_id = parts[2][: -len(".pack.jsonl")]
    if not QUEUE_RE.match(parts[1]) or not ID_RE.match(pack_id) or not pack_id.endswith("000"):
        return None
    return parts[1], pack_id


def decode_pack(data: bytes, queue: str, pack_id: str, max_size: int) -> list[tuple[dict, bytes]]:
    """A pack object to its (envelope, line bytes), validated as a whole: one bad line and
    the pack is refused (EnvelopeError naming the line), so nothing of a bad pack runs."""
    if len(data) > PACK_LIMIT:
        raise EnvelopeError(f"pack is {len(data)} bytes, over the {PACK_LIMIT}-byte limit")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not 1 <= len(lines) <= PACK_MAX:
        raise EnvelopeError(f"pack holds {len(lines)} lines; expected 1..{PACK_MAX} envelopes")
    out = []
    for i, line in enumerate(lines):
        try:
            env = decode(line, max_size)
            expected = pack_id[:-3] + f"{i:03x}"
            if env["id"] != expected or env["queue"] != queue:
                raise EnvelopeError(f"id/queue ({env['id']}, {env['queue']}) do not match the "
                                    f"pack: expected ({expected}, {queue})")
            if env.get("key") is not None or env.get("payload_ref") is not None:
                raise EnvelopeError("a packed job cannot have a key or payload_ref (those are "
                                    "put one object per job)")
        except EnvelopeError as e:
            raise EnvelopeError(f"pack line {i + 1}: {e}") from None
        out.append((env, line))
    return out
