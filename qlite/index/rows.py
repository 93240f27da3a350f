"""The rows the index hands out: ``JobRow`` (a job) and ``Attempt`` (one of its attempts).

Their JSON columns are decoded here, once, so no caller parses index fields: ``error`` and
``progress`` on reading, the envelope and the result on first use (the claim path reads the
envelope, the publish path the result; neither pays for the other). The raw texts stay too:
a retry puts the ingested envelope back byte for byte (its signature covers those bytes), and
a large result goes to its own object as the handler's JSON.

A query returns some of the columns: the others keep their defaults (None, 0 or empty).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from typing import Any


@dataclass
class Attempt:
    """One attempt of a job (the ``attempts`` table); ``logs`` holds the handler's own log
    lines, decoded."""
    job_id: str
    attempt: int
    owner: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    outcome: str | None = None  # None while it runs; succeeded | retry | failed | lost | ...
    error_type: str | None = None
    message: str | None = None
    traceback: str | None = None
    logs: list[dict] | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> Attempt:
        return cls(**{**row, "logs": json.loads(row["logs"]) if row.get("logs") else None})


@dataclass(eq=False)
class JobRow:
    """A job of the index (the ``jobs`` table, schema.sql), JSON columns decoded."""
    id: str
    task: str = ""
    queue: str = ""
    state: str = ""
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 0  # a claim returns the budget including worker deaths forgiven
    run_at: float | None = None
    lease_until: float | None = None
    owner: str | None = None
    envelope_json: str | None = None  # the envelope as ingested: see ``envelope``
    inbox_key: str | None = None
    key: str | None = None  # the idempotency key
    result_json: str | None = None  # the handler's JSON result: see ``result``
    error: dict | None = None  # {type, message, traceback} of the last failure
    enqueued_at: str | None = None
    ingested_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    published: bool = False
    expires_at: float | None = None
    grp: str | None = None
    pack: str | None = None  # the pack object's key, if it came in one
    suspect: bool = False
    solo: bool = False
    crashes: int = 0
    lost: int = 0
    progress: dict | None = None  # the last ctx.progress report
    lifo: bool = False
    packed: bool = False  # (claims) it still lives in its pack object
    attempt_log: list[Attempt] = field(default_factory=list)

    @classmethod
    def of(cls, row: dict[str, Any]) -> JobRow:
        """The row of a query result (column name -> value). Filled in place, without the
        generated ``__init__`` of 30-odd arguments: a claim and a pack's record make one per
        job (docs/performance.md)."""
        if not row.keys() <= _COLUMNS:
            raise TypeError(f"JobRow.of: unknown columns {sorted(row.keys() - _COLUMNS)}")
        job = cls.__new__(cls)
        values = job.__dict__
        values.update(_DEFAULTS)
        values["attempt_log"] = []
        values.update(row)
        if "envelope" in row:
            values["envelope_json"] = values.pop("envelope")
        if "result" in row:
            values["result_json"] = values.pop("result")
        for name in ("error", "progress"):
            if row.get(name):
                values[name] = json.loads(row[name])
            elif name in row:
                values[name] = None
        for name in _FLAGS:
            if name in row:
                values[name] = bool(row[name])
        return job

    @cached_property
    def envelope(self) -> dict:
        """The envelope, decoded (empty for a row read without it)."""
        return json.loads(self.envelope_json) if self.envelope_json else {}

    def envelope_may_hold(self, *keys: str) -> bool:
        """Whether the envelope may hold one of ``keys`` (at any depth). False only when its
        raw text shows it cannot, without decoding it: a key is written ``"key"`` unless
        escaped, and a text without a backslash escapes nothing. Publishing a pack's records
        asks this of every member (docs/performance.md)."""
        text = self.envelope_json
        if text is None or "envelope" in self.__dict__:  # nothing to read, or decoded already
            return text is not None
        if "\\" in text:
            return True
        for key in keys:  # a loop, not any(): the worker's loop asks this of every job
            if f'"{key}"' in text:
                return True
        return False

    @cached_property
    def result(self) -> Any:
        """The handler's result, decoded (None: no result)."""
        return json.loads(self.result_json) if self.result_json is not None else None

    @property
    def in_pack(self) -> bool:
        """Whether its results go into its pack's batched record: it still lives in the pack
        object (a packed job retried on its own has an inbox object of its own)."""
        return bool(self.pack) and self.pack == self.inbox_key

    def public(self) -> dict[str, Any]:
        """The row as plain JSON-ready data (``qlite show --json``, the dashboard): the
        columns under their names, JSON columns decoded."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "attempt_log":
                out[f.name] = [vars(a).copy() for a in self.attempt_log]
            elif f.name in ("envelope_json", "result_json"):
                continue
            else:
                out[f.name] = getattr(self, f.name)
        out["envelope"], out["result"] = self.envelope, self.result
        return out


_DEFAULTS = {f.name: f.default for f in fields(JobRow) if f.default is not MISSING}
# The columns a query may return: the fields, under the names of the JSON columns.
_COLUMNS = frozenset(_DEFAULTS) | {"id", "envelope", "result"}
_FLAGS = ("published", "suspect", "solo", "lifo", "packed")

# The columns of Index.jobs (qlite ls, the dashboard's list), besides error and progress.
LISTED = ("id", "task", "queue", "state", "attempts", "max_attempts", "enqueued_at",
          "started_at", "finished_at", "run_at")
