"""A job's status record: the one type written to ``results/`` and read back. Standard library.

The worker writes it (``results/{id}.json``, a member of ``results/packs/{pack}.json``, the
record of a quarantined object); ``Client.status``/``wait``, ``qlite status``/``logs`` and the
Django backend read it, and a job still in the inbox gets one too (``pending``). The record's
fields are documented in docs/envelope.md; ``to_record`` writes them in the order every qlite
so far wrote them, so the bytes in the bucket do not change.

Three forms: a terminal job's full record; the short record of an object refused at ingest
(``quarantine_key`` set); a pending job's status, which lives in no object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from qlite.states import ALL, PENDING

# Fields every record of a terminal job has, in the order they are written.
_TERMINAL = ("id", "state", "task", "queue", "attempts", "max_attempts", "result", "error",
             "errors", "logs", "key", "enqueued_at", "started_at", "finished_at", "progress")
_QUARANTINED = ("id", "state", "task", "queue", "attempts", "result", "error", "errors",
                "quarantine_key", "finished_at")
_PENDING = ("id", "state", "task", "queue", "attempts", "result", "error", "enqueued_at",
            "not_before", "progress")
# Written only when set, after the others, in this order.
_OPTIONAL = ("workers", "not_before", "sealed_result", "args", "kwargs", "result_ref", "pack")


@dataclass
class JobStatus:
    id: str
    state: str
    task: str | None = None
    queue: str | None = None
    attempts: int = 0
    max_attempts: int | None = None
    result: Any = None
    error: dict | None = None  # {type, message, traceback}: the last failure, unless succeeded
    errors: list[dict] = field(default_factory=list)  # {attempt, type, message, traceback, at}
    logs: list[dict] = field(default_factory=list)  # {attempt, lines}: the handler's log lines
    key: str | None = None  # the idempotency key
    workers: list | None = None  # the worker of each attempt (host:pid:start), in order
    enqueued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: dict | None = None  # the last ctx.progress (docs/long-jobs.md)
    not_before: str | None = None  # pending only: when it may run
    sealed_result: Any = None  # the result sealed with QLITE_ENCRYPTION_KEY
    args: list | None = None  # repeated when the producer asked (meta record_args)
    kwargs: dict | None = None
    result_ref: str | None = None  # a result too large to inline: its own object
    pack: str | None = None  # the pack it came in (put_many)
    quarantine_key: str | None = None  # refused at ingest: where the object went
    encrypted: bool = False  # read back: a sealed result this reader has no key for
    extra: dict[str, Any] = field(default_factory=dict)  # fields this qlite does not know

    @classmethod
    def from_record(cls, record: Any, job_id: str | None = None) -> JobStatus:
        """The status from a decoded record (of ``job_id``, if given); ValueError when it is
        not a qlite status record (of that job; the fields readers use have wrong types)."""
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                and (job_id is None or record["id"] == job_id)
                and record.get("state") in ALL
                and isinstance(record.get("error"), dict | None)
                and isinstance(record.get("errors", []), list)
                and isinstance(record.get("result_ref"), str | None)):
            raise ValueError(f"not a qlite status record of job {job_id}")
        known = {name: record[name] for name in cls.__dataclass_fields__
                 if name != "extra" and name in record}
        if known.get("errors") is None:
            known.pop("errors", None)
        if not isinstance(known.get("logs", []), list):
            known.pop("logs")
        extra = {k: v for k, v in record.items() if k not in cls.__dataclass_fields__
                 and k != "v"}
        return cls(**known, extra=extra)

    def to_record(self) -> dict[str, Any]:
        """The record as written to ``results/`` (and returned by ``Client.status``)."""
        if self.state == PENDING:
            out = {name: getattr(self, name) for name in _PENDING}
        else:
            names = _QUARANTINED if self.quarantine_key is not None else _TERMINAL
            out = {"v": 1, **{name: getattr(self, name) for name in names}}
        for name in _OPTIONAL:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.encrypted:
            out["encrypted"] = True
        return {**out, **self.extra}

    @classmethod
    def quarantined(cls, job_id: str, queue: str | None, message: str, quarantine_key: str,
                    finished_at: str, pack: str | None = None) -> JobStatus:
        """A job whose object was refused at ingest: failed, with the reason."""
        return cls(id=job_id, state="failed", queue=queue, pack=pack,
                   error={"type": "Quarantined", "message": message, "traceback": None},
                   quarantine_key=quarantine_key, finished_at=finished_at)

    @classmethod
    def pending(cls, job_id: str, queue: str, env: dict, pack: str | None = None) -> JobStatus:
        """A job still in the inbox (``env``: its envelope, empty when it cannot be read)."""
        return cls(id=job_id, state=PENDING, task=env.get("task"), queue=queue,
                   enqueued_at=env.get("enqueued_at"), not_before=env.get("not_before"),
                   pack=pack)


def records_in(raw: bytes | None) -> list[JobStatus]:
    """The status records in the bytes of a ``results/`` object: a job's record, or each member
    of a pack's batched record. What is not a status record is left out."""
    if raw is None:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    found = list(data["jobs"].values()) if isinstance(data, dict) and isinstance(
        data.get("jobs"), dict) else [data]
    out = []
    for record in found:
        try:
            out.append(JobStatus.from_record(record))
        except ValueError:
            continue
    return out
